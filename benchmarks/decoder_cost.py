"""What the decoders' full-resolution correction (`SegmentationSpec.full_resolution`) costs per co-training step
on the CPU: both branches' forward and backward on one slab (8 slices, 28 classes as the OASIS-like task's
working labels, cross-entropy), in bfloat16 autocast where the CPU computes it natively (as `amp` trains),
with and without the stage, alternated `--repeats` times; the median of each batch of steps, then the fastest.

    python benchmarks/decoder_cost.py [--image-size 128] [--repeats 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from napari_rrl_medsam.core.configs import CotrainConfig, EncoderConfig
from napari_rrl_medsam.core.device import training_dtype
from napari_rrl_medsam.core.models.segmentation import branch_logits, build_segmentation

N_CLASSES = 28


def seconds_per_step(full_resolution: bool, size: int, steps: int = 8) -> float:
    """Median seconds of a forward and backward pass of both branches (the first two steps left out).

    Args:
        full_resolution: with the decoders' full-resolution stage.
        size: the slices' side in pixels.
        steps: passes timed.
    """
    torch.manual_seed(0)
    parts = build_segmentation(CotrainConfig(full_resolution=full_resolution), EncoderConfig(), N_CLASSES)
    dtype = training_dtype(torch.device("cpu"), True)
    x, y = torch.rand(8, 3, size, size), torch.randint(0, N_CLASSES, (1, 8, size, size))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            logits_g, _, logits_m = branch_logits(parts, x)
        loss = torch.nn.functional.cross_entropy(logits_g.float(), y) + torch.nn.functional.cross_entropy(
            logits_m.float(), y
        )
        loss.backward()
        times.append(time.perf_counter() - start)
    kept = sorted(times[2:])
    return kept[len(kept) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"bfloat16 autocast: {training_dtype(torch.device('cpu'), True) is not None}")
    times = {False: [], True: []}
    for _ in range(args.repeats):
        for full in times:
            times[full].append(seconds_per_step(full, args.image_size))
    base, full = min(times[False]), min(times[True])
    print(f"without the stage {base:.3f} s, with it {full:.3f} s per step's networks: {full / base:.2f}x")


if __name__ == "__main__":
    main()
