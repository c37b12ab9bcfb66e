"""What the two training widgets share: an engine generator driven by a napari `thread_worker`, with
Start / Pause / Resume / Stop, a progress bar, a live loss plot and error notifications.

Stop is `worker.quit()`. napari's `GeneratorWorker` then merely stops iterating and would leave the engine
suspended until garbage collection, in some thread, at some time: `ClosingWorker` closes the generator in the
worker thread as soon as the loop ends, so the engine saves its checkpoint before `finished` is emitted.

With `in_subprocess` the worker thread only relays: the engine runs in the main thread of a child process
(`api.in_subprocess`, one step per event pulled, so Pause, Stop and errors behave the same).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path

from magicgui.widgets import Container
from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QWidget

from .layers import FollowsLayers, role, scrolled_layout
from .plot import LivePlot
from .torch_import import LoadsTorch, import_torch_stack


class ClosingWorker(GeneratorWorker):
    """A generator worker that closes its generator when it stops, in the worker thread (see module doc)."""

    def work(self):
        try:
            return super().work()
        finally:
            self._gen.close()


def unfinished(path: Path) -> bool:
    """Whether `path` holds a checkpoint of a run that has not reached its last step (one Resume can continue)."""
    path = Path(path)
    if not path.is_file():
        return False
    return not _complete(str(path), path.stat().st_mtime_ns)


@lru_cache(maxsize=16)
def _complete(path: str, mtime_ns: int) -> bool:
    """A checkpoint's `complete` flag, read once per version of the file (an unreadable one counts as unfinished:
    Resume then says what is wrong with it)."""
    from ..api import InputError, load_checkpoint

    try:
        return bool(load_checkpoint(path).get("complete"))
    except (InputError, OSError):
        return False


def _drive(job: Callable[[], Iterator], in_subprocess: bool) -> Iterator:
    import_torch_stack()  # started when the widget opened: a Start before it is done waits here, in the worker
    if in_subprocess:
        from ..api import in_subprocess

        yield from in_subprocess(job)
    else:
        yield from job()


class TrainingPanel(QWidget, FollowsLayers, LoadsTorch):
    """Subclasses build `self.form` (a magicgui Container) and implement `job(resume)` and `show_preview`."""

    title = "training"
    ready_text = "idle"
    actions = ("Start", "Pause", "Resume", "Stop")  # the buttons; a subclass connects those it adds
    in_subprocess = False  # run the job in a child process (`api.in_subprocess`); its job must be picklable
    shown = Signal(object)  # each Progress event once the widget has displayed it (tests, benchmarks)

    def __init__(self, napari_viewer, form: Container) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.form = form
        self.worker: ClosingWorker | None = None
        self.plot = LivePlot(f"{self.title}: losses and validation Dice")
        self.status = QLabel("idle")
        self.status.setWordWrap(True)
        self.checkpoint_label = QLabel("")
        self.checkpoint_label.setWordWrap(True)
        self.checkpoint_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.bar = QProgressBar()
        self.bar.setFormat("%v / %m")
        self.buttons = {name: QPushButton(name) for name in self.actions}
        self.buttons["Start"].clicked.connect(lambda: self.start(resume=False))
        self.buttons["Pause"].clicked.connect(self.pause)
        self.buttons["Resume"].clicked.connect(self.resume)
        self.buttons["Stop"].clicked.connect(self.stop)
        row = QHBoxLayout()
        for button in self.buttons.values():
            row.addWidget(button)
        layout = self.body = scrolled_layout(self)
        layout.addWidget(form.native)
        layout.addLayout(row)
        for widget in (self.bar, self.status, self.plot, self.checkpoint_label):
            layout.addWidget(widget)
        layout.addStretch(1)
        self._pbar = None
        self.last_event = None
        self.failed: Exception | None = None
        self._set_state("idle")
        self.load_torch()

    # --- to implement -------------------------------------------------------------------------------------
    def job(self, resume: bool) -> Callable[[], Iterator]:
        """Collect inputs (main thread: layers are read here) and return the generator function the worker runs
        (a picklable one, e.g. a `functools.partial` of a module-level function, when `in_subprocess`)."""
        raise NotImplementedError

    def resumable(self) -> bool:
        return False

    def idle_actions(self) -> set[str]:
        """The subclass's own buttons that are enabled while no run is going."""
        return set()

    def show_preview(self, event) -> None:
        """Show `event.preview` arrays in layers (main thread)."""

    def show_evaluation(self, event) -> None:
        """Show a run's closing evaluation (an event of stage "evaluation": its metrics) (main thread)."""

    def on_finished(self) -> None:
        """Called on the main thread when a run ends (completed, stopped or failed)."""

    # --- controls -----------------------------------------------------------------------------------------
    def start(self, resume: bool = False, job: Callable | None = None) -> ClosingWorker | None:
        """Start a run: `job(resume)` (default `self.job`) collects the inputs and gives the generator function."""
        if self.worker is not None:
            return self.worker
        try:
            job = (job or self.job)(resume)
        except Exception as exc:  # bad inputs: say so and stay usable
            show_error(f"{self.title}: {exc}")
            return None
        if not resume:  # a new run: nothing of the last one stays on show
            self.plot.clear()
            self.bar.setMaximum(1)
            self.bar.setValue(0)
            self.checkpoint_label.setText("")
            for layer in [x for x in self.viewer.layers if role(x) == "live"]:
                self.viewer.layers.remove(layer)
        self.failed, self.last_event = None, None
        worker = create_worker(
            _drive,
            job,
            self.in_subprocess,
            _worker_class=ClosingWorker,
            _start_thread=False,
            _connect={"errored": self._errored},
        )
        worker.yielded.connect(self._yielded)
        worker.paused.connect(self._paused)
        worker.resumed.connect(lambda: self._set_state("running"))
        worker.finished.connect(self._finished)
        self.worker = worker
        self._set_state("running")
        self.status.setText("starting...")
        worker.start()
        return worker

    def pause(self) -> None:
        if self.worker is not None:
            self.worker.pause()
            self.status.setText("pausing at the end of this step...")

    def resume(self) -> None:
        """Continue a paused run, or restart a stopped one from its checkpoint."""
        if self.worker is not None:
            self.worker.resume()
        else:
            self.start(resume=True)

    def stop(self) -> None:
        if self.worker is not None:
            self._set_state("stopping")
            self.status.setText("stopping: saving a checkpoint...")
            if self.worker.is_paused:
                self.worker.resume()
            self.worker.quit()

    # --- worker signals (main thread) ---------------------------------------------------------------------
    def _yielded(self, event) -> None:
        if event.stage == "evaluation":  # after the last training step: not a step of its own
            self.show_evaluation(event)
            self.shown.emit(event)
            return
        self.last_event = event
        if self.bar.maximum() != event.total:
            self.bar.setMaximum(max(event.total, 1))
        self.bar.setValue(min(event.step, event.total))
        what = event.message or event.stage
        losses = "  ".join(f"{k} {v:.4g}" for k, v in event.losses.items())
        self.status.setText(f"{what}: {event.step}/{event.total}  {losses}")
        self._update_napari_progress(event)
        if event.losses or event.metrics:
            self.plot.add(event.step, {**event.losses, **event.metrics}, event.stage)
        if event.checkpoint is not None:
            self.checkpoint_label.setText(f"checkpoint: {event.checkpoint} (step {event.step})")
        if event.preview:
            self.show_preview(event)
        self.shown.emit(event)

    def _update_napari_progress(self, event) -> None:
        """Mirror the stage in napari's activity dock."""
        if self._pbar is None or self._pbar.total != event.total or self._pbar.desc != event.stage:
            if self._pbar is not None:
                self._pbar.close()
            self._pbar = napari_progress(total=event.total, desc=event.stage)
        self._pbar.n = min(event.step, event.total)
        self._pbar.refresh()

    def _paused(self) -> None:
        self._set_state("paused")
        event = self.last_event
        where = f" at {event.message or event.stage} step {event.step}/{event.total}" if event else ""
        self.status.setText(f"paused{where}: Resume continues, Stop saves a checkpoint")

    def _errored(self, exc: Exception) -> None:
        self.failed = exc
        show_error(f"{self.title} failed: {exc}")

    def _finished(self) -> None:
        self.worker = None
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        if self.failed is None:
            event = self.last_event
            done = event is not None and event.step >= event.total
            self.status.setText(
                ("finished" if done else "stopped (Resume continues from the checkpoint)")
                + (f" at {event.stage} step {event.step}/{event.total}" if event else "")
            )
            show_info(f"{self.title}: {self.status.text()}")
        else:
            self.status.setText(f"failed: {self.failed}")
        self.on_finished()
        self._set_state("idle")

    def _set_state(self, state: str) -> None:
        self.state = state
        enabled = {
            "idle": {"Start"} | ({"Resume"} if self.resumable() else set()) | self.idle_actions(),
            "running": {"Pause", "Stop"},
            "paused": {"Resume", "Stop"},
            "stopping": set(),
        }[state]
        for name, button in self.buttons.items():
            button.setEnabled(name in enabled)
        self.form.enabled = state == "idle"
