"""Load torch and MONAI inside a running napari: in the background, and safely.

A widget opens at once (its forms need no torch: the settings classes are plain dataclasses) and asks for the
torch stack with `when_torch_loaded`; the import (8-10 s on 2 CPU cores, most of it MONAI's) runs in a worker
thread while the user fills the form, and the widget's status says when it is done. Work started before then waits
for it in its own worker thread (`import_torch_stack` takes a lock), never on the main thread.

`import monai` imports torchvision, which imports `torch._dynamo`, which probes for Triton by importing it.
Triton's compiled library carries its own LLVM; once napari has created an OpenGL context on Mesa's llvmpipe
(Xvfb, remote desktops, VMs; also LLVM-based GPU drivers), loading it crashes the whole process (segmentation
fault, seen on this project's machines with torch 2.14 / triton 3.8). The widgets never compile kernels, so
they hide Triton while these modules load; torch then records "no Triton" and never loads it.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

LOADING = "loading PyTorch in the background (once per session: about 10 s on 2 CPU cores)..."

START_AFTER_MS = 250  # the background import starts once the opening widget is on screen
_lock = threading.Lock()  # one import at a time: a second caller waits for the first


def torch_loaded() -> bool:
    """Whether torch, torchvision and MONAI are imported (then `import_torch_stack` returns at once)."""
    return all(name in sys.modules for name in ("monai", "torchvision", "torch._dynamo"))


def import_torch_stack() -> None:
    """Import torch, torchvision and MONAI with Triton hidden (any thread; waits while another thread imports)."""
    with _lock:
        if torch_loaded():
            return
        hide = "triton" not in sys.modules
        if hide:
            sys.modules["triton"] = None  # `import triton` raises ImportError: torch treats Triton as absent
        try:
            import monai  # noqa: F401  (imports torch and torchvision)
            import torch._dynamo  # noqa: F401  (its Triton probe is cached now)
        finally:
            if hide and sys.modules.get("triton", 0) is None:
                del sys.modules["triton"]


class LoadsTorch:
    """Mixin for a dock widget with a `status` QLabel and a `title`: `load_torch()` (end of `__init__`) says torch
    is loading and then shows `ready_text`; a failed import is said on the status line and as a notification."""

    ready_text = ""

    def load_torch(self) -> None:
        self.status.setText(LOADING)
        when_torch_loaded(self._torch_ready, self._torch_failed)

    def _torch_ready(self, _=None) -> None:
        if self.status.text() == LOADING:
            self.status.setText(self.ready_text)

    def _torch_failed(self, exc: Exception) -> None:
        from napari.utils.notifications import show_error

        self.status.setText(f"PyTorch could not be loaded ({exc}): reinstall napari-rrl-medsam's dependencies.")
        show_error(f"{self.title}: PyTorch could not be loaded: {exc}")


def when_torch_loaded(ready: Callable[[None], None], failed: Callable[[Exception], None]) -> None:
    """Call `ready(None)` on the main thread once the torch stack is imported: at once when it is, else after a
    napari worker thread has imported it; `failed(error)` if the import fails.

    Args:
        ready: called with None on the main thread (a widget's bound method: Qt forgets a closed widget's).
        failed: called with the import's exception on the main thread.
    """
    if torch_loaded():
        ready(None)
        return
    from napari.qt.threading import create_worker
    from qtpy.QtCore import QTimer

    worker = create_worker(import_torch_stack, _start_thread=False)
    worker.returned.connect(ready)
    worker.errored.connect(failed)
    QTimer.singleShot(START_AFTER_MS, worker.start)  # the widget is drawn first: the import competes for the GIL
