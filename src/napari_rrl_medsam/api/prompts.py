"""Box prompts: a SAM-family model (LiteMedSAM, shipped) segments the structure in a box and propagates it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..core.volume import Volume
from .volumes import as_volume


def prompter(volume: Volume | str | Path, device: str = "cpu"):
    """A box prompter for one volume (`core.prompting.VolumePrompter`): `prompter.segment(box)` as
    `prompt_segment`, each axial slice's embedding computed once and kept (for a viewer: keep one per image).

    Args:
        volume: the image (volume or file).
        device: "cpu", "cuda" or "auto".
    """
    from ..core.prompting import VolumePrompter, litemedsam_prompt_model

    return VolumePrompter(as_volume(volume), litemedsam_prompt_model(device))


def prompt_segment(
    volume: Volume | str | Path, box: Sequence[Sequence[float]], propagate: bool = True, device: str = "cpu"
) -> Volume:
    """Segment the structure inside a box with LiteMedSAM, slice by slice.

    Args:
        volume: the image (volume or file), any orientation.
        box: two opposite corners in world millimetres (RAS, through the volume's affine) on one axial plane,
            `((x0, y0, z), (x1, y1, z))`.
        propagate: carry the mask to the neighbouring slices (each prompted with the previous slice's mask box)
            until it vanishes; False: the box's slice only.
        device: "cpu", "cuda" or "auto".

    Returns:
        A 0/1 label volume on the input's native grid and affine.
    """
    return prompter(volume, device).segment(box, propagate)
