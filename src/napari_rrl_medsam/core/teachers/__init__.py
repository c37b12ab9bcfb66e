"""Frozen SAM-family teachers behind one interface (see base.Teacher); pick one by name with get_teacher."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .base import Teacher
from .litemedsam import load_litemedsam
from .sam import cached_sam_vit_b, load_sam_vit_b

TEACHERS = ("litemedsam", "sam_vit_b")

__all__ = ["TEACHERS", "Teacher", "get_teacher", "load_litemedsam", "load_sam_vit_b"]


def get_teacher(name: str = "auto", checkpoint: str | Path | None = None, device: str = "cpu") -> Teacher:
    """ "auto" = SAM ViT-B when a checkpoint is given or already in the cache folder, else LiteMedSAM (offline).

    "auto" never downloads; ask for "sam_vit_b" explicitly to fetch the official weights.
    """
    if name == "auto":
        name = "sam_vit_b" if checkpoint is not None or cached_sam_vit_b() is not None else "litemedsam"
    if name == "litemedsam":
        return load_litemedsam(checkpoint, device=device)
    if name == "sam_vit_b":
        return load_sam_vit_b(checkpoint, device=device)
    raise InputError(f"unknown teacher {name!r}: choose one of 'auto', " + ", ".join(repr(t) for t in TEACHERS))
