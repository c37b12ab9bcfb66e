"""Foundation figures on the OASIS-like set: I/O and resampling cost, what 2 mm working resolution costs
label maps, and the atlas-to-target Dice with no registration (the data README quotes about 0.58).

    python benchmarks/foundation.py [--data ../shared/data/oasis_like]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from napari_rrl_medsam.api import evaluate, load_task, resample, to_working


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(Path(__file__).parents[1] / ".." / "shared" / "data" / "oasis_like"))
    parser.add_argument("--spacing", type=float, default=2.0)
    args = parser.parse_args()
    t = time.perf_counter()
    task = load_task(args.data, check=False)
    atlas, atlas_labels = task.atlas.load()
    print(f"load atlas image + labels ({'x'.join(map(str, atlas.shape))}): {time.perf_counter() - t:.2f} s")
    t = time.perf_counter()
    work_image = to_working(atlas, args.spacing)
    print(f"image to {args.spacing:g} mm working grid {work_image.shape}: {time.perf_counter() - t:.2f} s")
    print(
        f"labels to the {args.spacing:g} mm working grid and back vs the originals (the ceiling of a model "
        f"working at {args.spacing:g} mm):"
    )
    for name, order in (("nearest neighbour", 0), ("linear one-hot", 1)):
        t = time.perf_counter()
        back = resample(resample(atlas_labels, work_image.grid, order), atlas_labels.grid, order)
        seconds = time.perf_counter() - t
        t = time.perf_counter()
        round_trip = evaluate(back, atlas_labels, task.eval_labels)
        print(
            f"  {name:<18} mean Dice {round_trip.mean_dice:.3f}, mean HD95 {round_trip.mean_hd95:.2f} mm; "
            f"round trip {seconds:.2f} s, evaluate (Dice + HD95) {time.perf_counter() - t:.2f} s"
        )
    print(
        "\natlas labels mapped through world coordinates (no registration), native grid, "
        f"{len(task.eval_labels)} eval labels"
    )
    scores = []
    for case in task.evaluation:
        image, truth = case.load()
        report = evaluate(resample(atlas_labels, truth.grid), truth, task.eval_labels, hd95=False)
        scores.append(report.mean_dice)
        print(f"  {case.id:<10} mean Dice {report.mean_dice:.3f}")
    print(f"  mean over {len(scores)} validation volumes: {np.mean(scores):.3f}")


if __name__ == "__main__":
    main()
