"""The on-disk cache of teacher embeddings (under the user cache folder, `files.cache_dir`).

Teacher embeddings are deterministic (frozen weights, fixed resizing), and a SAM ViT-B forward costs seconds per
slice on a CPU, so each slice is encoded once per teacher and read back on every later epoch, run or session.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .errors import InputError
from .files import atomic_write, cache_dir

if TYPE_CHECKING:
    from .teachers import Teacher


class EmbeddingCache:
    """Teacher embeddings stored as float16 .npy files under ``root/<teacher.id>/<key[:2]>/<key>.npy``."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir() / "embeddings"
        self.hits = 0
        self.misses = 0

    def key(self, teacher: Teacher, image: torch.Tensor) -> str:
        """SHA-256 over the teacher id, the image's shape and dtype and its values (as CPU float32)."""
        digest = hashlib.sha256(f"{teacher.id}|{tuple(image.shape)}|{image.dtype}|".encode())
        digest.update(image.detach().to("cpu", torch.float32).contiguous().numpy().data)
        return digest.hexdigest()

    def path(self, teacher: Teacher, key: str) -> Path:
        return self.root / teacher.id / key[:2] / f"{key}.npy"

    def get(self, teacher: Teacher, image: torch.Tensor) -> torch.Tensor | None:
        return self._read(teacher, self.key(teacher, image))

    def put(self, teacher: Teacher, image: torch.Tensor, embedding: torch.Tensor) -> None:
        self._write(teacher, self.key(teacher, image), embedding)

    def embed(
        self,
        teacher: Teacher,
        images: torch.Tensor,
        batch_size: int = 4,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """(N, 3, S, S) images -> (N, C, h, w) float16 CPU embeddings, encoding only those not cached yet.

        The missing ones are encoded in batches on the teacher's device; ``on_progress(done, total)`` is called
        after each batch (and once at the end when everything was cached).
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputError(
                f"embed needs (N, 3, S, S) images, got shape {tuple(images.shape)}: "
                "stack the slices and repeat each grey slice to 3 channels"
            )
        total = images.shape[0]
        out = torch.empty(total, teacher.embed_dim, teacher.embed_size, teacher.embed_size, dtype=torch.float16)
        keys = [self.key(teacher, image) for image in images]
        missing = []
        for i, key in enumerate(keys):
            cached = self._read(teacher, key)
            if cached is None:
                missing.append(i)
            else:
                out[i] = cached
        self.hits += total - len(missing)
        self.misses += len(missing)
        done = total - len(missing)
        for start in range(0, len(missing), max(1, batch_size)):
            batch = missing[start : start + max(1, batch_size)]
            embeddings = teacher.encode(images[batch]).to("cpu", torch.float16)
            for i, embedding in zip(batch, embeddings):
                self._write(teacher, keys[i], embedding)
                out[i] = embedding
            done += len(batch)
            if on_progress is not None:
                on_progress(done, total)
        if not missing and on_progress is not None:
            on_progress(total, total)
        return out

    def _read(self, teacher: Teacher, key: str) -> torch.Tensor | None:
        """The cached embedding, or None when absent, unreadable or of the wrong shape (then it is recomputed)."""
        path = self.path(teacher, key)
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        if array.shape != (teacher.embed_dim, teacher.embed_size, teacher.embed_size) or array.dtype != np.float16:
            return None
        return torch.from_numpy(array)

    def _write(self, teacher: Teacher, key: str, embedding: torch.Tensor) -> None:
        """Atomic (temp file + os.replace), so an interrupted run never leaves a half-written embedding."""
        array = embedding.detach().to("cpu", torch.float16).numpy()

        def write(tmp: str) -> None:
            with open(tmp, "wb") as handle:  # a file object: np.save would add ".npy" to a bare name
                np.save(handle, array)

        atomic_write(self.path(teacher, key), write)
