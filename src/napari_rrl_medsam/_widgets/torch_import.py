"""Import torch and MONAI safely inside a running napari.

`import monai` imports torchvision, which imports `torch._dynamo`, which probes for Triton by importing it.
Triton's compiled library carries its own LLVM; once napari has created an OpenGL context on Mesa's llvmpipe
(Xvfb, remote desktops, VMs; also LLVM-based GPU drivers), loading it crashes the whole process (segmentation
fault, seen on this project's machines with torch 2.14 / triton 3.8). The widgets never compile kernels, so
they hide Triton while these modules load; torch then records "no Triton" and never loads it. Done on the main
thread when a widget opens, so workers never import large extension modules in the background.
"""

from __future__ import annotations

import sys


def import_torch_stack() -> None:
    if "monai" in sys.modules and "torchvision" in sys.modules:
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
