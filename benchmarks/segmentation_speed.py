"""Segmentation speed: seconds per volume of `rrl-medsam segment` (the api's `segment_batch`) over the OASIS-like
validation volumes (1 mm brains), where the time goes (cProfile's top functions by own time, optional) and the mean
Dice, so a faster path is seen to keep the model's figures (issue 19).

    python benchmarks/segmentation_speed.py --data ../shared/data --model <run>/rrl_medsam.pt [--profile] [--threads 2]
        [--overlap 0.25] [--precision float32]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_rrl_medsam import api


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--model", type=Path, required=True, help="a co-trained checkpoint (rrl_medsam.pt)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="also cProfile one pass and print the top functions")
    parser.add_argument("--overlap", type=float, help="slabs' overlap instead of the model's (slab_overlap)")
    parser.add_argument("--precision", default="auto", choices=api.PRECISIONS, help="the networks' arithmetic")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = api.load_task(args.data / "oasis_like" / "dataset.json", split="oneshot", check=False)
    model = api.load_model(args.model, "cpu", args.precision)
    if args.overlap is not None:
        model.config.slab_overlap = args.overlap
    api.segment(model, task.evaluation[0].load()[0])  # warm-up (first-call allocations, lazy imports)
    with tempfile.TemporaryDirectory() as out:
        profiler = cProfile.Profile() if args.profile else None
        start = time.perf_counter()
        if profiler:
            profiler.enable()
        seconds = {
            Path(path).name: s for path, _, s in api.segment_batch(model, [c.image for c in task.evaluation], out)
        }
        if profiler:
            profiler.disable()
        wall = time.perf_counter() - start
        dice = []
        for case in task.evaluation:
            labels = api.load_volume(Path(out) / f"{case.id}_labels.nii.gz")
            dice.append(api.evaluate(labels, case.load()[1], task.eval_labels, False).mean_dice)
    for (name, s), d in zip(seconds.items(), dice):
        print(f"  {name:<20} {s:6.2f} s  Dice {d:.3f}")
    n = len(seconds)
    print(f"{n} volumes: {wall:.1f} s, {wall / n:.2f} s per volume, {60 * n / wall:.1f} volumes per minute; "
          f"mean Dice {np.mean(dice):.3f} ({args.threads} threads, precision {args.precision}: autocast "
          f"{model.dtype or 'none'})")  # fmt: skip
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    main()
