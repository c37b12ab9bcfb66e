"""Segmentation metrics on the native grid: per-structure Dice and HD95 (MONAI's implementations).

Each structure is scored inside the bounding box of prediction and truth (plus a margin), which
gives MONAI's values exactly at a fraction of the cost on whole brains.
A structure absent from both prediction and truth scores NaN and is left out of the means. A structure in only
one of them (missed, or predicted where there is none) scores Dice 0 and, as HD95, the diagonal of the
volume in mm (the largest distance it can have; the BraTS convention): a miss is never rewarded by
dropping out of the mean.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError
from .volume import Volume


@dataclass
class Evaluation:
    """Per-structure Dice and HD95 (mm) of a prediction against the truth, and their means."""

    labels: list[int]
    dice: dict[int, float]
    hd95: dict[int, float]
    names: dict[int, str] | None = None
    missed: list[int] = field(default_factory=list)  # in only one of prediction and truth

    @property
    def mean_dice(self) -> float:
        return _nanmean(self.dice.values())

    @property
    def mean_hd95(self) -> float:
        return _nanmean(self.hd95.values())

    def rows(self) -> list[dict]:
        names = self.names or {}
        return [
            {
                "label": lab,
                "name": names.get(lab, ""),
                "dice": self.dice[lab],
                "hd95_mm": self.hd95.get(lab, math.nan),
                "missed": lab in self.missed,
            }
            for lab in self.labels
        ]

    def table(self) -> str:
        lines = [f"{'label':>6}  {'structure':<28} {'Dice':>6} {'HD95 mm':>8}"]
        for r in self.rows():
            lines.append(
                f"{r['label']:>6}  {r['name'][:28]:<28} {r['dice']:6.3f} {r['hd95_mm']:8.2f}"
                + ("  missed" if r["missed"] else "")
            )
        lines.append(f"{'mean':>6}  {'':<28} {self.mean_dice:6.3f} {self.mean_hd95:8.2f}")
        return "\n".join(lines)

    def to_csv(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the table as CSV (atomic).

        Args:
            path: the CSV file.
            overwrite: whether an existing file may be replaced.
        """
        from .files import atomic_write, check_output

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=["label", "name", "dice", "hd95_mm", "missed"])
                writer.writeheader()
                writer.writerows(self.rows())

        return atomic_write(check_output(path, overwrite, "CSV table"), write, ".csv")


def _nanmean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def _crop(a: np.ndarray, b: np.ndarray, margin: int = 2) -> tuple[slice, ...]:
    """The bounding box of a | b, grown by `margin` voxels (so surfaces never touch the crop border)."""
    idx = np.nonzero(a | b)
    return tuple(slice(max(int(i.min()) - margin, 0), int(i.max()) + margin + 1) for i in idx)


def _hd95(pred, truth, spacing) -> float:
    from monai.metrics import compute_hausdorff_distance

    with warnings.catch_warnings():  # MONAI 1.5+ warns about its own internal argument
        warnings.simplefilter("ignore", FutureWarning)
        return float(
            compute_hausdorff_distance(pred, truth, include_background=True, percentile=95, spacing=list(spacing))[0, 0]
        )


def evaluate(
    prediction: Volume | np.ndarray,
    truth: Volume | np.ndarray,
    labels: Sequence[int] | None = None,
    hd95: bool = True,
    spacing: Sequence[float] | None = None,
    names: dict[int, str] | None = None,
) -> Evaluation:
    """Dice and HD95 per label of `prediction` against `truth` on the same grid.

    `labels` defaults to every non-zero label of the truth. Voxel spacing (for HD95 in mm) comes
    from the truth's affine, or `spacing` for bare arrays.
    """
    import torch
    from monai.metrics import compute_dice

    pred_arr, true_arr = (_label_array(v, what) for v, what in ((prediction, "prediction"), (truth, "truth")))
    if pred_arr.shape != true_arr.shape:
        raise InputError(
            f"prediction shape {pred_arr.shape} differs from truth shape {true_arr.shape}; "
            "bring the prediction to the truth's grid first (napari_rrl_medsam.core.resample)."
        )
    if isinstance(prediction, Volume) and isinstance(truth, Volume) and not prediction.grid.same_as(truth.grid, 1e-3):
        raise InputError(
            "prediction and truth have the same shape but different affines: they are not on the "
            "same grid. Resample the prediction onto the truth's grid first."
        )
    if spacing is None:
        spacing = truth.spacing if isinstance(truth, Volume) else (1.0,) * true_arr.ndim
    if labels is None:
        labels = [int(v) for v in np.unique(true_arr) if v != 0]
        if not labels:
            raise InputError(
                "the truth has no labelled voxel (all 0): there is nothing to score. Check that it is "
                "the right label map, or name the structures to score (--labels)."
            )
    diagonal = float(np.linalg.norm(np.array(true_arr.shape) * np.asarray(spacing, float)))
    dice, hd, missed = {}, {}, []
    for lab in labels:
        p, t = pred_arr == lab, true_arr == lab
        if not (p.any() or t.any()):
            dice[lab] = hd[lab] = math.nan
            continue
        if p.any() != t.any():
            dice[lab], missed = 0.0, missed + [int(lab)]
            if hd95:
                hd[lab] = diagonal
            continue
        box = _crop(p, t)
        pt, tt = (torch.from_numpy(np.ascontiguousarray(x[box]))[None, None] for x in (p, t))
        dice[lab] = float(compute_dice(pt, tt, include_background=True, ignore_empty=False)[0, 0])
        if hd95:
            hd[lab] = _hd95(pt, tt, spacing)
    return Evaluation([int(v) for v in labels], dice, hd, names, missed)


def _label_array(v: Volume | np.ndarray, what: str) -> np.ndarray:
    """The array of a label map, refusing what is not one (fractions, negative values: an image)."""
    from .task import integer_labels

    array = v.array if isinstance(v, Volume) else np.asarray(v)
    return integer_labels(array, f"the {what} ({v.path})" if isinstance(v, Volume) and v.path else f"the {what}")
