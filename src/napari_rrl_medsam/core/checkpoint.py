"""Checkpoints: atomic writes and safe loads (`weights_only=True`), with clear errors for bad files."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import InputError
from .files import atomic_write, check_output


def _tensors(state: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every floating-point tensor in a nested checkpoint, with its dotted name."""
    import torch

    if isinstance(state, torch.Tensor):
        if state.is_floating_point():
            yield prefix, state
    elif isinstance(state, dict):
        for key, value in state.items():
            yield from _tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(state, (list, tuple)):
        for i, value in enumerate(state):
            yield from _tensors(value, f"{prefix}.{i}")


def non_finite(state: Any) -> str | None:
    """The name of the first tensor in `state` holding NaN or infinity, or None if all are finite.

    Args:
        state: a checkpoint dict (nested dicts, lists and tensors).
    """
    import torch

    return next((name for name, t in _tensors(state) if not bool(torch.isfinite(t).all())), None)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write `state` with torch.save to a temporary file, then rename: a crash never leaves half a file.

    Non-finite weights are refused (the last good checkpoint stays). If the file cannot be written (disk full,
    folder gone), the state goes to the system's temporary folder and the error says where (`atomic_write`).

    Args:
        state: the checkpoint dict (with a "kind" entry).
        path: the file to write.
    """
    import torch

    path = Path(path)
    bad = non_finite(state)
    if bad is not None:
        raise InputError(
            f"not saving {path}: {bad!r} holds NaN or infinity (training diverged); the previous "
            "checkpoint there, if any, is unchanged. Resume from it with a lower learning rate."
        )
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Load a checkpoint of ours on the CPU; `kind` (e.g. "distill") must match the one it was saved as.

    Args:
        path: the checkpoint file.
        kind: the kind it must be, or None for any.
    """
    import pickle

    import torch

    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a checkpoint file (.pt).")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():
            raise InputError(f"cannot read checkpoint {path} (UnpicklingError); it is truncated or corrupt.") from exc
        # weights_only refused an object: not ours, and never to be unpickled fully (PyTorch's hint says otherwise)
        raise InputError(
            f"{path} is not a checkpoint this product wrote: it holds Python objects beyond weights, "
            "which must not be unpickled (they can run code). Use a checkpoint written by "
            "napari-rrl-medsam."
        ) from exc
    except PermissionError as exc:
        raise InputError(f"cannot read {path}: permission denied.") from exc
    except Exception as exc:
        raise InputError(
            f"cannot read checkpoint {path} ({type(exc).__name__}); it is truncated, corrupt "
            "or not a napari-rrl-medsam checkpoint."
        ) from exc
    if not isinstance(state, dict) or "kind" not in state:
        raise InputError(f"{path} is not a napari-rrl-medsam checkpoint (no 'kind' entry).")
    if kind is not None and state["kind"] != kind:
        raise InputError(f"{path} is a {state['kind']!r} checkpoint, but a {kind!r} checkpoint is needed here.")
    bad = non_finite(state)
    if bad is not None:
        raise InputError(
            f"{path} holds NaN or infinite weights ({bad!r}): it is corrupt or from a run that "
            "diverged; use an earlier checkpoint or train again."
        )
    return state


@contextmanager
def reading(path: str | Path) -> Iterator[None]:
    """Turn a checkpoint that lacks an entry or whose weights do not fit its model into a clear error.

    Args:
        path: the checkpoint being turned into a model, for the message.
    """
    try:
        yield
    except InputError:
        raise  # already says what is wrong and what to do
    except KeyError as exc:
        raise InputError(
            f"{path} lacks the entry {exc}: it is incomplete or was not written by this version of "
            "napari-rrl-medsam. Use a checkpoint it wrote, or train again."
        ) from exc
    except (RuntimeError, TypeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"{path} does not fit the model it describes ({first}); it is damaged or was edited. "
            "Use a checkpoint napari-rrl-medsam wrote, or train again."
        ) from exc


def check_same_task(state: dict[str, Any], path: str | Path, grid: Any, labels: list[int]) -> None:
    """Refuse to resume a checkpoint on another task: its working grid and label values must be this run's.

    Args:
        state: the checkpoint being resumed.
        path: its file, for the message.
        grid: this run's working grid (a `Grid`).
        labels: this run's label values, as the checkpoint stores them.
    """
    import numpy as np

    saved = state.get("grid")
    if saved is not None and (
        tuple(saved["shape"]) != tuple(grid.shape)
        or not np.allclose(np.asarray(saved["affine"]), grid.affine, atol=1e-3)
    ):
        raise InputError(
            f"{path} was trained on another atlas (working grid {tuple(saved['shape'])}, this task's "
            f"is {tuple(grid.shape)} or placed elsewhere); resume it with the task it was trained on, "
            "or train a new checkpoint (another output path)."
        )
    saved_labels = state.get("classes", state.get("labels"))
    if saved_labels is not None and [int(v) for v in saved_labels] != [int(v) for v in labels]:
        raise InputError(
            f"{path} was trained on the label values {list(saved_labels)}, this task's atlas has "
            f"{list(labels)}; resume it with the task it was trained on, or train a new checkpoint."
        )


def resume_state(path: str | Path, kind: str, resume: bool) -> dict[str, Any] | None:
    """The checkpoint to continue from, None for a fresh run; an existing file is never replaced unless resumed.

    Args:
        path: the run's checkpoint file.
        kind: its kind ("registration", "rrl-medsam", "distill").
        resume: whether an existing file may be continued (else it is refused).
    """
    path = Path(path)
    if not path.exists():
        check_output(path, what="checkpoint")  # a folder we can write in, before any work
        return None
    if not resume:
        raise InputError(f"{path} exists; resume from it (resume=True, CLI --resume) or choose another path.")
    return load_checkpoint(path, kind)


def model_from_checkpoint(path: str | Path, kind: str | None, build: Callable[[dict], Any]) -> Any:
    """A model built from a checkpoint read once: `build(state)` under `reading`, its `source` set to the file.

    Args:
        path: the checkpoint file.
        kind: the kind it must be, or None for any (`build` then checks).
        build: makes the model from the checkpoint's contents, e.g. `RegistrationModel.from_state`.
    """
    state = load_checkpoint(path, kind)
    with reading(path):
        model = build(state)
    model.source = str(Path(path).resolve())
    return model
