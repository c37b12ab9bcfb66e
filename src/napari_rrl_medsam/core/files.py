"""Atomic file writes (a crash or a Stop never leaves half a file where a good one was expected) and the user
cache folder (weights and teacher embeddings)."""

from __future__ import annotations

import glob
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

CACHE_ENV = "RRL_MEDSAM_CACHE"


def cache_dir() -> Path:
    """$RRL_MEDSAM_CACHE if set, else the platform's user cache folder (never site-packages); created on demand."""
    import pooch

    path = Path(os.environ.get(CACHE_ENV) or pooch.os_cache("napari-rrl-medsam")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _file_mode(path: Path) -> int:
    """The mode a plain `open(path, "w")` would give (mkstemp makes private 0600 files)."""
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


STALE_SECONDS = 600  # a temporary file this old was left by a killed writer (a save takes seconds)


def _remove_stale(path: Path, suffix: str) -> None:
    """Delete temporaries of `path` that a killed process (SIGKILL, power loss) left behind."""
    for old in path.parent.glob(f".{glob.escape(path.name)}.*{suffix}"):
        try:
            if time.time() - old.stat().st_mtime > STALE_SECONDS:
                old.unlink()
        except OSError:
            pass


def atomic_write(path: str | Path, write: Callable[[str], None], suffix: str = ".tmp") -> Path:
    """Call `write(temporary_path)` in `path`'s folder, then rename it onto `path` (keeping normal permissions).

    If that fails (disk full, folder gone), the result is written to the system's temporary folder instead
    and an `InputError` says where: finished work is never lost to a failed save.

    Args:
        path: the file to write.
        write: writes the content to the path it is given.
        suffix: the temporary file's ending, for writers that choose a format by it (e.g. ".nii.gz").
    """
    from .errors import InputError

    path = Path(path)
    try:
        return _write_and_rename(path, write, suffix)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
        reason = getattr(exc, "strerror", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        ending = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
        stem = path.name[: len(path.name) - len(ending)]
        spare = Path(tempfile.gettempdir()) / f"{stem}-rescued-{time.strftime('%Y%m%d-%H%M%S')}{ending}"
        if spare.parent.resolve() == path.parent.resolve():
            raise
        try:
            _write_and_rename(spare, write, suffix)
        except (OSError, RuntimeError):
            raise InputError(
                f"cannot write {path} ({reason}) nor a rescue copy in {spare.parent}; free some "
                "space or choose another location, and run again."
            ) from exc
        raise InputError(
            f"cannot write {path} ({reason}); the result was saved to {spare} instead: move it where you want it."
        ) from exc


def _write_and_rename(path: Path, write: Callable[[str], None], suffix: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path, suffix)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _file_mode(path))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _writable_folder(folder: Path) -> None:
    """Refuse a folder that cannot be created or written in (checked on its nearest existing ancestor)."""
    from .errors import InputError

    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{existing} is a file, so the folder {folder} cannot be made; choose another location.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"cannot write in {existing} (permission denied or read-only); choose another location.")


def check_output(path: str | Path, overwrite: bool = False, what: str = "output") -> Path:
    """Check, before any work, that a file can be written at `path` (and may be, if it exists).

    Args:
        path: the file to be written.
        overwrite: whether an existing file may be replaced.
        what: what the file is, for the messages ("checkpoint", "CSV table").
    """
    from .errors import InputError

    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a file name for the {what}.")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another name or pass overwrite=True (CLI: --overwrite).")
    _writable_folder(path.parent)
    return path


def check_output_folder(folder: str | Path) -> Path:
    """Check, before any work, that `folder` is (or can be made) a folder we can write in.

    Args:
        folder: the output folder.
    """
    from .errors import InputError

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} is a file; --out must be a folder.")
    _writable_folder(folder)
    return folder
