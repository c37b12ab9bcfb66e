"""GPU check (issue 19): every engine and segmentation on CUDA, on the OASIS-like data, in a few minutes on one GPU.

For each engine (DSKD with LiteMedSAM as the teacher, registration, co-training): the first `--compare` steps of the
same seed on the CPU and on CUDA, whose losses must agree within `--tolerance` (relative: the kernels' rounding, and
DSKD's mixed precision on CUDA, growing step by step), then `--steps` steps on CUDA: steps per second, peak GPU
memory; registration and co-training once more in mixed precision (`amp`), to see whether it pays. Then segmentation
of the validation volumes with the trained model: seconds per volume. Prints a line per check and a table; exits 1
if a comparison fails.

    python benchmarks/gpu_check.py --data ../shared/data --out <work folder> [--steps 300] [--compare 5]

Off a GPU (`--device cpu`) it runs the same code paths on the CPU only, as a dry run of the script.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def recipe(stage: str) -> dict:
    spec = json.loads((ROOT / "training" / "cotrain.json").read_text())
    settings = spec["registration_settings"] if stage == "registration" else spec["settings"]
    return {**settings, "validate_every": 0, "checkpoint_every": 10_000}


def run(train, device: str, steps: int, out: Path) -> tuple[list[float], float, float]:
    """Train `steps` steps on `device` (`train(config, out)` gives the event stream): the losses, seconds per step
    (first step excluded: kernels' warm-up) and peak GPU memory in GiB."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    losses, times = [], []
    for event in train({"steps": steps, "device": device, "seed": 0}, out):
        if event.losses:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter())
            losses.append(event.losses["loss"])
    rate = (times[-1] - times[0]) / max(len(times) - 1, 1) if len(times) > 1 else float("nan")
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else 0.0
    return losses, rate, peak


def trainers(task, out: Path, n_compare_volumes: int):
    """The engines as `train(settings, out)` -> events, on the task (co-training on the registration trained here)."""
    from napari_rrl_medsam import api

    slices = task.unlabelled[:4]

    def distill(settings, path):
        config = {"natural_steps": settings["steps"] // 2, "medical_steps": settings["steps"] - settings["steps"] // 2,
                  "batch_size": 8, "device": settings["device"], "seed": settings["seed"], "checkpoint_every": 10_000,
                  "slices_per_volume": 8}  # fmt: skip
        return api.distill([c.image for c in slices], out=path, config=config, events=True)

    def registration(settings, path):
        return api.train_registration(task, out=path, config={**recipe("registration"), **settings},
                                      validation=False, events=True)  # fmt: skip

    def cotrain(settings, path):
        # the comparison's pseudo labels: the network alone (refinement's optimiser steps drift apart on two devices)
        few = settings["steps"] < 50
        config = {**recipe("cotrain"), **settings, "preview_every": 0, **({"refine_steps": 0} if few else {})}
        unlabelled = [c.image for c in task.unlabelled[:n_compare_volumes]] if few else ()
        return api.cotrain(task if not few else None, atlas=task.atlas if few else None, unlabelled=unlabelled,
                           registration=out / "registration_cuda.pt", out=path, config=config, validation=False,
                           events=True)  # fmt: skip

    return {"distill": distill, "registration": registration, "cotrain": cotrain}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--compare", type=int, default=5, help="steps compared between the CPU and CUDA")
    parser.add_argument("--tolerance", type=float, default=0.02)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--engines", nargs="+", default=["distill", "registration", "cotrain"])
    args = parser.parse_args()
    import torch

    from napari_rrl_medsam import api

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA GPU here: run with --device cpu for a dry run of the script")
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"gpu_check on {name}, torch {torch.__version__}", flush=True)
    task = api.load_task(args.data / "oasis_like" / "dataset.json", split="oneshot", check=False)
    args.out.mkdir(parents=True, exist_ok=True)
    train, rows, ok = trainers(task, args.out, 3), [], True
    for engine in args.engines:
        cpu, _, _ = run(train[engine], "cpu", args.compare, args.out / f"{engine}_cpu.pt")
        dev, _, _ = run(train[engine], args.device, args.compare, args.out / f"{engine}_compare.pt")
        worst = float(np.max(np.abs(np.subtract(cpu, dev)) / np.maximum(np.abs(cpu), 1e-6)))
        agree = worst <= args.tolerance
        ok &= agree
        print(f"{engine}: losses of {args.compare} steps, CPU {np.round(cpu, 4).tolist()}, {args.device} "
              f"{np.round(dev, 4).tolist()}: largest relative difference {worst:.2e} "
              f"({'agree' if agree else 'DISAGREE'})", flush=True)  # fmt: skip
        losses, seconds, peak = run(train[engine], args.device, args.steps, args.out / f"{engine}_cuda.pt")
        rows.append((engine, args.steps, 1 / seconds, peak, losses[0], losses[-1], worst))
        print(f"{engine}: {args.steps} steps, {1 / seconds:.1f} steps/s, peak {peak:.2f} GiB", flush=True)
        if engine != "distill" and args.device.startswith("cuda"):  # DSKD always runs in mixed precision on CUDA
            amp = lambda settings, out, engine=engine: train[engine]({**settings, "amp": True}, out)  # noqa: E731
            losses, seconds, peak = run(amp, args.device, args.steps, args.out / f"{engine}_amp.pt")
            rows.append((f"{engine} amp", args.steps, 1 / seconds, peak, losses[0], losses[-1], float("nan")))
    if "cotrain" in args.engines:
        model = api.load_model(args.out / "cotrain_cuda.pt", args.device)
        api.segment(model, task.evaluation[0].load()[0])  # warm-up
        times = []
        for case in task.evaluation:
            image = case.load()[0]
            start = time.perf_counter()
            api.segment(model, image)
            times.append(time.perf_counter() - start)
        print(f"segmentation: {np.mean(times):.2f} s per volume ({len(times)} volumes, on {args.device})")
    print(f"\n{'engine':<13} {'steps':>6} {'steps/s':>8} {'peak GiB':>9} {'first loss':>11} {'last loss':>10} "
          f"{'CPU-CUDA rel. diff':>19}")  # fmt: skip
    for engine, steps, rate, peak, first, last, worst in rows:
        print(f"{engine:<13} {steps:6d} {rate:8.1f} {peak:9.2f} {first:11.4f} {last:10.4f} {worst:19.2e}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
