"""Device choice: "auto" means CUDA when present, else the CPU."""

from __future__ import annotations

from .errors import InputError


def resolve_device(device="auto"):
    """A torch.device from "auto", "cpu", "cuda", "cuda:1" or a torch.device."""
    import torch

    device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r} was asked for but no CUDA GPU is available; use device='cpu' or 'auto'.")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise InputError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda'.") from exc


def process_device(device="auto") -> str:
    """The device of this process: under torchrun with CUDA, "auto" and "cuda" are the GPU of its LOCAL_RANK (one per
    process).

    Args:
        device: as for `resolve_device`.
    """
    import os

    import torch

    if str(device) in ("auto", "cuda") and "LOCAL_RANK" in os.environ and torch.cuda.is_available():
        return f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
    return str(device)


PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def cpu_has_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), so that bfloat16 convolutions are faster than
    float32 ones rather than emulated and slower."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def inference_dtype(device, precision: str = "auto"):
    """The autocast dtype of a network's forward pass at inference on `device` (None: float32 throughout).

    Args:
        device: a torch.device (or its name) the network runs on.
        precision: "float32"; "bfloat16" or "float16" (autocast: convolutions in that type, softmax, logs and
            sums in float32); "auto": bfloat16 on a CUDA GPU that has it (float16 on an older one) and on a CPU
            that computes it natively (`cpu_has_bfloat16`), else float32.
    """
    import torch

    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}.")
    kind = torch.device(device).type
    if precision == "auto":
        if kind == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if kind == "cpu" and cpu_has_bfloat16() else None
    if precision == "float16" and kind == "cpu":
        raise InputError("float16 is for CUDA GPUs; on the CPU use precision 'bfloat16' or 'float32'.")
    return None if precision == "float32" else getattr(torch, precision)


def training_dtype(device, amp: bool):
    """The autocast dtype of a training step on `device` (None: float32 throughout).

    Args:
        device: a torch.device (or its name) the step runs on.
        amp: mixed precision asked for: float16 on CUDA (with a gradient scaler), bfloat16 on a CPU that computes it
            natively (`cpu_has_bfloat16`); on another CPU float32 (emulated bfloat16 is slower).
    """
    import torch

    if not amp:
        return None
    return torch.float16 if torch.device(device).type == "cuda" else inference_dtype(device, "auto")
