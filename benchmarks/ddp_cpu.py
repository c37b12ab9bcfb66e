"""Two CPU processes (torchrun, gloo, one thread each) against one process with two threads, on these 2 cores:
steps per second and validation Dice after the same number of training samples, for registration and co-training
(issue 19). Each process of a distributed run trains on its own draws, so 2 processes take half the steps for the
same samples (their gradients averaged: the batch per optimiser step doubles, the learning rates stay the recipe's).

    python benchmarks/ddp_cpu.py --data ../shared/data --out <work folder> --registration <registration.pt>
        [--samples-registration 200] [--samples-cotrain 300]

`--registration`: a trained network for co-training's pseudo labels (e.g. the learning curve's
labelled_1/registration.pt). Runs are skipped when their checkpoint is complete; figures go to `ddp.json`.
Registration Dice: the network alone (no refinement) warping the atlas's labels onto each validation volume;
co-training: `segment`; mean over the 27 eval labels on the native grid.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
LAYOUTS = ((1, 2), (2, 1))  # (processes, threads each)


def recipe(stage: str) -> dict:
    spec = json.loads((ROOT / "training" / "cotrain.json").read_text())
    settings = spec["registration_settings"] if stage == "registration" else spec["settings"]
    return {**settings, "validate_every": 0, "checkpoint_every": 50}


def worker(args) -> None:
    """One process of a run (under torchrun, or alone): train `args.worker` for `args.steps` steps."""
    from napari_rrl_medsam import api

    task = api.load_task(args.data / "oasis_like" / "dataset.json", split="oneshot", check=False)
    config = {**recipe(args.worker), "steps": args.steps, "device": "cpu"}
    common = dict(out=args.checkpoint_file, config=config, validation=False, resume=args.checkpoint_file.exists())
    if args.worker == "registration":
        api.train_registration(task, **common)
    else:
        api.cotrain(task, registration=args.registration, **common)


def launch(args, stage: str, procs: int, threads: int, run: Path) -> float:
    """Train one layout in fresh processes; its wall seconds."""
    steps = getattr(args, f"samples_{stage}") // procs
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    me = [str(Path(__file__).resolve()), "--data", str(args.data), "--out", str(args.out), "--worker", stage,
          "--steps", str(steps), "--checkpoint-file", str(run), "--registration", str(args.registration)]  # fmt: skip
    if procs > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}", *me]
    else:
        command = [sys.executable, *me]
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True)
    return time.perf_counter() - start


def score(task, stage: str, run: Path) -> float:
    """Mean validation Dice of a trained run (see the module's docstring)."""
    from napari_rrl_medsam import api

    model = api.load_model(run, "cpu")
    dice = []
    for case in task.evaluation:
        image, truth = case.load()
        if stage == "registration":
            labels = api.register(model, task.atlas, image, refine_steps=0).warped_labels
        else:
            labels = api.segment(model, image).labels
        dice.append(api.evaluate(labels, truth, task.eval_labels, False).mean_dice)
    return float(np.mean(dice))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--registration", type=Path, required=True)
    parser.add_argument("--samples-registration", type=int, default=200)
    parser.add_argument("--samples-cotrain", type=int, default=300)
    parser.add_argument("--stages", nargs="+", default=["registration", "cotrain"])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    import torch

    from napari_rrl_medsam import api
    from napari_rrl_medsam.core.checkpoint import load_checkpoint

    torch.set_num_threads(2)
    task = api.load_task(args.data / "oasis_like" / "dataset.json", split="oneshot", check=False)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "ddp.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for stage in args.stages:
        for procs, threads in LAYOUTS:
            key, run = f"{stage} {procs}x{threads}", args.out / f"{stage}_{procs}x{threads}.pt"
            if key in results:
                continue
            done = run.exists() and load_checkpoint(run)["complete"]
            print(f"{key}: {'trained before' if done else 'training'}", flush=True)
            wall = None if done else launch(args, stage, procs, threads, run)
            state = load_checkpoint(run)
            steps, elapsed = int(state["step"]), float(state["elapsed"])
            results[key] = {"processes": procs, "threads": threads, "steps": steps, "samples": steps * procs,
                            "seconds of steps": elapsed, "wall seconds": wall}  # fmt: skip
            results[key]["dice"] = score(task, stage, run)
            path.write_text(json.dumps(results, indent=1))
    print(f"\n{'run':<22} {'steps':>6} {'samples':>8} {'s of steps':>11} {'steps/s':>8} {'samples/s':>10} "
          f"{'wall s':>7} {'Dice':>6}")  # fmt: skip
    for key, r in results.items():
        rate = r["steps"] / r["seconds of steps"]
        print(f"{key:<22} {r['steps']:6d} {r['samples']:8d} {r['seconds of steps']:11.0f} {rate:8.3f} "
              f"{rate * r['processes']:10.3f} {r['wall seconds'] or float('nan'):7.0f} {r['dice']:6.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
