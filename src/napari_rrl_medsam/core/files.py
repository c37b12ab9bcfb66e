"""Atomic file writes: a crash or a Stop never leaves half a file where a good one was expected."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def _file_mode(path: Path) -> int:
    """The mode a plain `open(path, "w")` would give (mkstemp makes private 0600 files)."""
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | Path, write: Callable[[str], None], suffix: str = ".tmp") -> Path:
    """Call `write(temporary_path)` in `path`'s folder, then rename it onto `path` (keeping normal permissions).

    `suffix` is the temporary file's ending, for writers that choose a format by it (e.g. ".nii.gz").
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
