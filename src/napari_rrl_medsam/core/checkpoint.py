"""Checkpoints: atomic writes and safe loads (`weights_only=True`), with clear errors for bad files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import InputError
from .files import atomic_write


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write `state` with torch.save to a temporary file, then rename: a crash never leaves half a file."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Load a checkpoint of ours on the CPU; `kind` (e.g. "distill") must match the one it was saved as."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"cannot read checkpoint {path} ({type(exc).__name__}: {exc}); it is truncated, corrupt "
                         "or not a napari-rrl-medsam checkpoint.") from exc
    if not isinstance(state, dict) or "kind" not in state:
        raise InputError(f"{path} is not a napari-rrl-medsam checkpoint (no 'kind' entry).")
    if kind is not None and state["kind"] != kind:
        raise InputError(f"{path} is a {state['kind']!r} checkpoint, but a {kind!r} checkpoint is needed here.")
    return state


def resume_state(path: str | Path, kind: str, resume: bool) -> dict[str, Any] | None:
    """The checkpoint to continue from, None for a fresh run; an existing file is never replaced unless resumed."""
    path = Path(path)
    if not path.exists():
        return None
    if not resume:
        raise InputError(f"{path} exists; resume from it (resume=True, CLI --resume) or choose another path.")
    return load_checkpoint(path, kind)
