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
