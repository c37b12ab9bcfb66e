"""What the two one-shot-work widgets (inference, correction) share: one job at a time in a napari worker thread,
the form disabled meanwhile, errors as notifications and on the status line, and torch loaded in the background
when the widget opens."""

from __future__ import annotations

from collections.abc import Callable

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error

from .torch_import import LoadsTorch, import_torch_stack


def _after_torch(func: Callable):
    import_torch_stack()  # started when the widget opened: work asked for before it is done waits here
    return func()


class RunsInWorker(LoadsTorch):
    """Mixin for a widget with `form`, `status` (a QLabel) and `worker`; `ready_text` is the status once torch
    has loaded. Call `load_torch()` at the end of `__init__`."""

    form: object
    status: object
    worker: object = None

    def _run(self, what: str, func: Callable, done: Callable, note: str = "") -> None:
        """Run `func()` in a worker thread (after torch has loaded), then `done(result)` on the main thread."""
        if self.worker is not None:
            return
        self.form.enabled = False
        self.status.setText(f"{what}...{note}")
        worker = create_worker(
            _after_torch, func, _start_thread=False, _connect={"errored": lambda exc: self._failed(what, exc)}
        )
        worker.returned.connect(done)
        worker.finished.connect(self._idle)
        self.worker = worker
        worker.start()

    def _failed(self, what: str, exc: Exception) -> None:
        self.status.setText(f"{what} failed: {exc}")
        show_error(f"{what} failed: {exc}")

    def _idle(self) -> None:
        self.worker = None
        self.form.enabled = True
