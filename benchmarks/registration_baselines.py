"""Classical registration baselines on the OASIS-like set (benchmark harness only, not the product).

affine only: the volumes are already affinely aligned, so the atlas labels are mapped through world
coordinates; demons: SimpleITK fast symmetric forces demons, 3-level pyramid, on the 2 mm working grid,
its field then warping the 1 mm atlas labels onto each 1 mm target (nearest neighbour).

    python benchmarks/registration_baselines.py --data ../shared/data/oasis_like
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from napari_rrl_medsam.api import evaluate, load_task, resample, to_working
from napari_rrl_medsam.core.resample import normalise_intensity
from napari_rrl_medsam.core.volume import Volume
from napari_rrl_medsam.core.warp import Field, warp


def _to_sitk(volume: Volume):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.transpose(normalise_intensity(volume.array), (2, 1, 0)))
    image.SetSpacing([float(s) for s in volume.spacing])
    image.SetOrigin([float(o) for o in volume.affine[:3, 3]])
    return image


def demons(fixed: Volume, moving: Volume, iterations: int = 60, shrink=(4, 2, 1), sigma: float = 1.5) -> Field:
    """Multi-resolution fast symmetric forces demons on a diagonal (RAS) working grid; returns the field."""
    import SimpleITK as sitk

    f, m = _to_sitk(fixed), _to_sitk(moving)
    field = None
    for factor in shrink:
        fs = sitk.Shrink(sitk.SmoothingRecursiveGaussian(f, 0.5 * factor), [factor] * 3) if factor > 1 else f
        ms = sitk.Shrink(sitk.SmoothingRecursiveGaussian(m, 0.5 * factor), [factor] * 3) if factor > 1 else m
        initial = (
            sitk.Resample(field, fs, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
            if field is not None
            else sitk.Image(fs.GetSize(), sitk.sitkVectorFloat64, 3)
        )
        initial.CopyInformation(fs)
        filt = sitk.FastSymmetricForcesDemonsRegistrationFilter()
        filt.SetNumberOfIterations(iterations)
        filt.SetStandardDeviations(sigma)
        field = filt.Execute(fs, ms, initial)
    array = np.transpose(sitk.GetArrayFromImage(field), (3, 2, 1, 0)).astype(np.float32)  # (3, i, j, k), mm
    return Field(array, fixed.grid)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(Path(__file__).parents[1] / ".." / "shared" / "data" / "oasis_like"))
    parser.add_argument("--spacing", type=float, default=2.0)
    args = parser.parse_args()
    task = load_task(args.data, check=False)
    atlas, atlas_labels = task.atlas.load()
    atlas_work = to_working(atlas, args.spacing)
    rows = []
    for case in task.evaluation:
        image, truth = case.load()
        affine_only = evaluate(resample(atlas_labels, truth.grid), truth, task.eval_labels, hd95=False).mean_dice
        start = time.perf_counter()
        target_work = resample(image, atlas_work.grid)  # same field of view: the set is affinely aligned
        field = demons(target_work, atlas_work)
        seconds = time.perf_counter() - start
        warped = warp(atlas_labels, field, truth.grid)
        dice = evaluate(warped, truth, task.eval_labels, hd95=False).mean_dice
        rows.append((case.id, affine_only, dice, field.folding_fraction(), seconds))
        print(
            f"{case.id:<8} affine-only {affine_only:.3f}  demons {dice:.3f}  folding {100 * rows[-1][3]:.2f}%  "
            f"{seconds:.1f} s",
            flush=True,
        )
    a = np.array([r[1:] for r in rows])
    print(
        f"mean     affine-only {a[:, 0].mean():.3f}  demons {a[:, 1].mean():.3f}  folding {100 * a[:, 2].mean():.2f}%  "
        f"{a[:, 3].mean():.1f} s per pair"
    )


if __name__ == "__main__":
    main()
