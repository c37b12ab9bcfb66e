"""Multi-atlas label fusion: several labelled volumes registered onto one target, their warped labels combined
voxel by voxel.

- "majority": each atlas votes for its label (ties go to the atlas listed first);
- "local": each atlas's vote is weighted by how much its warped image resembles the target around that voxel,
  the locally weighted vote of classic multi-atlas segmentation (Artaechevarria et al., IEEE TMI 2009; Sabuncu et
  al., IEEE TMI 2010): weight = (local mean squared intensity difference + eps) ** -power, the difference
  averaged in a Gaussian window of `sigma_mm`, so an atlas that registered well here outvotes one that did not.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import InputError

FUSIONS = ("local", "majority")
SIGMA_MM = 3.0  # the local similarity window (Gaussian sigma)
POWER = 1.0  # weight = local MSD ** -POWER
EPS = 1e-3  # of the MSD of [0, 1] intensities: two identical neighbourhoods do not get an infinite weight


def check_label_sets(label_sets: Sequence[Sequence[int]], names: Sequence[str]) -> None:
    """The labelled volumes must hold the first's structures (the model's label table): a label the first has not is
    an error naming it; a structure one of them lacks (a small one absent in that subject, say FreeSurfer's 5th
    ventricle) is a warning: its votes and training say "absent" there.

    Args:
        label_sets: each volume's label values (background included or not, the same way for all).
        names: the volumes' names, for the messages.
    """
    import warnings

    first = set(int(v) for v in label_sets[0])
    for values, name in zip(label_sets[1:], names[1:]):
        values = set(int(v) for v in values)
        missing, extra = sorted(first - values), sorted(values - first)
        if extra:
            raise InputError(
                f"{name} has labels {extra} that {names[0]} has not: the labelled volumes must hold the same "
                f"structures as {names[0]}, which fixes the model's labels. Correct its label map (or leave it out)."
            )
        if missing:
            warnings.warn(
                f"{name} lacks labels {missing} of {names[0]}: it counts them as absent there (a small structure "
                "absent in that subject); if they were lost by mistake, correct its label map.",
                stacklevel=2,
            )


def local_weights(
    target: np.ndarray, warped: Sequence[np.ndarray], spacing: Sequence[float], sigma_mm: float = SIGMA_MM
) -> list[np.ndarray]:
    """Each atlas's per-voxel weight from its warped image's local similarity to the target.

    Args:
        target: the target's intensities, normalised to [0, 1].
        warped: each atlas image warped onto the target's grid, normalised the same way.
        spacing: the grid's voxel size (mm), for the window.
        sigma_mm: the Gaussian window's sigma in mm.
    """
    from scipy.ndimage import gaussian_filter

    sigma = [sigma_mm / s for s in spacing]
    weights = []
    for image in warped:
        msd = gaussian_filter((np.asarray(image, np.float32) - target) ** 2, sigma)
        weights.append((msd + EPS) ** -POWER)
    return weights


def fuse(label_maps: Sequence[np.ndarray], weights: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """The label with the most (weighted) votes at each voxel.

    Args:
        label_maps: the atlases' warped labels on one grid.
        weights: per atlas, a weight per voxel (or None: one vote each, a majority vote).
    """
    if not label_maps:
        raise InputError("label fusion needs at least one labelled volume.")
    if len(label_maps) == 1:
        return np.asarray(label_maps[0]).copy()
    if weights is None:  # one vote each; a hair more for earlier atlases, so that ties go to the first
        weights = [1.0 + 1e-3 * (len(label_maps) - i) / len(label_maps) for i in range(len(label_maps))]
    values = np.unique(np.concatenate([np.unique(m) for m in label_maps]))
    best = np.asarray(label_maps[0]).copy()
    best_score = np.full(best.shape, -1.0, np.float32)
    for value in values:
        score = np.zeros(best.shape, np.float32)
        for i, labels in enumerate(label_maps):
            hit = labels == value
            score += hit * weights[i]
        better = score > best_score
        best[better], best_score[better] = value, score[better]
    return best
