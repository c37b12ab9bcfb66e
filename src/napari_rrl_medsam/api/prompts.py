"""Box prompts: a SAM-family model (LiteMedSAM, shipped; or a SAM ViT-B / MedSAM checkpoint file) segments the
structure in a box and propagates it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..core.volume import Volume
from .volumes import as_volume


def prompter(
    volume: Volume | str | Path,
    device: str = "cpu",
    checkpoint: str | Path | None = None,
    normalisation: str = "auto",
):
    """A box prompter for one volume (`core.prompting.VolumePrompter`): `prompter.segment(box)` as
    `prompt_segment`, each axial slice's embedding computed once and kept (for a viewer: keep one per image).

    Args:
        volume: the image (volume or file).
        device: "cpu", "cuda" or "auto".
        checkpoint: a SAM ViT-B checkpoint file (SAM, or a fine-tuned one such as MedSAM); None: LiteMedSAM.
        normalisation: what such a checkpoint expects: "sam", "unit" ([0, 1], MedSAM) or "auto" ("sam" for the
            official SAM file, else "unit").
    """
    from ..core.prompting import VolumePrompter, prompt_model

    return VolumePrompter(as_volume(volume), prompt_model(checkpoint, device, normalisation))


def prompt_segment(
    volume: Volume | str | Path,
    box: Sequence[Sequence[float]],
    propagate: bool = True,
    device: str = "cpu",
    checkpoint: str | Path | None = None,
) -> Volume:
    """Segment the structure inside a box with LiteMedSAM (or a SAM ViT-B / MedSAM `checkpoint`), slice by slice.

    Args:
        volume: the image (volume or file), any orientation.
        box: two opposite corners in world millimetres (RAS, through the volume's affine) on one axial plane,
            `((x0, y0, z), (x1, y1, z))`.
        propagate: carry the mask to the neighbouring slices (each prompted with the previous slice's mask box)
            until it vanishes; False: the box's slice only.
        device: "cpu", "cuda" or "auto".
        checkpoint: a SAM ViT-B checkpoint file (SAM or MedSAM, `prompter`'s normalisation "auto"); None:
            LiteMedSAM.

    Returns:
        A 0/1 label volume on the input's native grid and affine.
    """
    return prompter(volume, device, checkpoint).segment(box, propagate)
