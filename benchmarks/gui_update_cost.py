"""What does a training widget's display cost napari's process, per part?

Opens a viewer with the bundled sample and the "One-shot training" widget (nothing trains), then for 8 s per
row calls the widget's own display code twice a second, as events of a running engine would, and prints the
process's CPU time as a share of one core: the status line, our progress bar, the live plot, all three, and
napari's `progress` (the activity dock; while one is open napari animates a 33 frames/s "in progress" GIF in
its status bar). CPU this process uses is CPU the training's 2 threads do not get on a 2-core machine.
Needs an X server; on a headless machine:

    xvfb-run -a python benchmarks/gui_update_cost.py
"""

from __future__ import annotations

import os
import tempfile
import time


def main() -> None:
    os.environ.setdefault("RRL_MEDSAM_CONFIG_DIR", tempfile.mkdtemp())  # leave the user's settings alone
    import napari
    from qtpy.QtCore import QEventLoop, QTimer

    from napari_rrl_medsam.core.engines.events import Progress

    viewer = napari.Viewer()
    viewer.open_sample("napari-rrl-medsam", "oneshot_brain")
    _, widget = viewer.window.add_plugin_dock_widget("napari-rrl-medsam", "One-shot training")
    step = 0

    def event() -> Progress:
        nonlocal step
        step += 1
        return Progress("co-training", step, 10**5, losses={"seg": 1 / step, "reg": 0.5, "cons": 0.3})

    parts = {
        "nothing": lambda: None,
        "status line": lambda: widget.status.setText(f"co-training: {event().step}/100000"),
        "progress bar": lambda: widget.bar.setValue(event().step % 100),
        "live plot": lambda: widget.plot.add(step, event().losses),
        "all three (the widget's own display)": lambda: widget._yielded(event()),
        "napari progress (activity dock) open": lambda: widget._update_napari_progress(event()),
    }

    def spin(seconds: float, update) -> float:
        loop, timer = QEventLoop(), QTimer()
        timer.setInterval(500)
        timer.timeout.connect(update)
        timer.start()
        QTimer.singleShot(int(seconds * 1000), loop.quit)
        cpu, wall = time.process_time(), time.perf_counter()
        loop.exec()
        timer.stop()
        return (time.process_time() - cpu) / (time.perf_counter() - wall)

    widget._update_napari_progress = lambda e: None  # "all three": our display without napari's progress
    spin(2, parts["nothing"])  # let the viewer settle
    for name, update in parts.items():
        if name.startswith("napari"):
            del widget._update_napari_progress  # the real method again
        print(f"{name:<40} {100 * spin(8, update):5.1f}% of a core", flush=True)
    widget._pbar.close()
    print(f"{'napari progress closed again':<40} {100 * spin(8, parts['nothing']):5.1f}% of a core")
    viewer.close()


if __name__ == "__main__":
    main()
