"""Co-training rows side by side on one GPU: one process per row of training/cotrain_gpu.json (each row's
settings on top of training/cotrain.json's), scored as benchmarks/cotrain.py scores them (27 eval labels,
native grid, with the registration prior where the row asks).

    python benchmarks/cotrain_gpu.py --data ../shared/data --runs training/runs [--only ROW ...] [--deadline 330]

One small-slab co-training run leaves a GPU mostly idle (its steps are bound by Python and kernel launches), so
the rows share the card. `--deadline` bounds the training wall time: a row still training then is saved where
it stands (its checkpoint resumes) and scored as it is, with the step it reached printed beside it. The runs
folder needs the registration checkpoint cotrain.json names (benchmarks/cotrain.py trains it). Compare rows with
the GPU's own "full" row (on an H200 it matched the CPU's: 0.766 against 0.765 / 0.766).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent


def score_row(args: argparse.Namespace, name: str, overrides: dict, prior: bool, stop_at: float) -> dict:
    """Train one row (resuming its checkpoint) until done or `stop_at` (epoch seconds), then score it."""
    import torch
    from cotrain import checkpoint_name

    from napari_rrl_medsam.api import cotrain, evaluate, load_model, load_task, segment

    torch.set_num_threads(args.threads)
    spec = json.loads((HERE.parent / "training" / "cotrain.json").read_text())
    runs, data = Path(args.runs), Path(args.data)
    task = load_task(data / spec["task"], split=spec["split"], check=False)
    registration = load_model(runs / spec["registration"])
    settings = {**spec["settings"], **overrides, "checkpoint_every": 500, "validate_every": 500}
    out = runs / checkpoint_name(f"gpu {name}")
    curve, step, started = [], 0, None
    settings["preview_every"] = 0
    events = cotrain(task, registration=registration, out=out, resume=True, config=settings, events=True)
    for event in events:
        if event.stage != "co-training":
            continue
        started = started or time.perf_counter()
        step = event.step
        if event.metrics:
            curve.append([step, round(event.metrics["val_dice"], 4), round(event.metrics["val_dice_general"], 4)])
            print(
                f"[{name}] step {step}: working-grid validation Dice {curve[-1][1]:.3f} "
                f"({(time.perf_counter() - started) / step:.3f} s per step)",
                flush=True,
            )
        if time.time() > stop_at and step < event.total:
            events.close()  # saves the checkpoint where it stands
            break
    train_s = time.perf_counter() - started if started else 0.0
    model = load_model(out)
    atlas, atlas_labels = task.atlas.load()
    validation = [case.load() for case in task.evaluation][: args.volumes]
    reports = [evaluate(segment(model, img).labels, truth, task.eval_labels, hd95=False) for img, truth in validation]
    result = {
        "row": name,
        "settings": overrides,
        "steps": step,
        "of": settings["steps"],
        "train_s": train_s,
        "cases": [c.id for c in task.evaluation][: args.volumes],
        "dice": [r.mean_dice for r in reports],
        "per_structure": {int(k): float(np.nanmean([r.dice[k] for r in reports])) for k in task.eval_labels},
        "curve": curve,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    if prior:
        refine = spec["settings"].get("refine_steps", 0)
        fused = [
            evaluate(
                segment(model, img, prior=registration.register(atlas, atlas_labels, img, refine).warped_labels).labels,
                truth,
                task.eval_labels,
                hd95=False,
            )
            for img, truth in validation
        ]
        result["dice_prior"] = [r.mean_dice for r in fused]
    return result


def launch(args: argparse.Namespace, rows: dict, priors: list[str]) -> list[dict]:
    """Every row in its own process; their output, prefixed, as it comes; their results when they end."""
    stop_at = time.time() + args.deadline
    procs, results, threads = {}, [], []
    for name, overrides in rows.items():
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            json.dumps([name, overrides, name in priors, stop_at]),
            "--data",
            args.data,
            "--runs",
            args.runs,
            "--threads",
            str(args.threads),
            "--volumes",
            str(args.volumes),
        ]
        procs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def read(name: str, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            if line.startswith("RESULT "):
                results.append(json.loads(line[7:]))
                print("\n".join(row_lines(results[-1])), flush=True)  # read at once should the run be cut
            elif "it/s]" not in line and "s/it]" not in line:  # progress bars stay out of the log
                print(f"[{name}] {line.rstrip()}" if not line.startswith("[") else line.rstrip(), flush=True)

    for name, proc in procs.items():
        threads.append(threading.Thread(target=read, args=(name, proc)))
        threads[-1].start()
    for thread in threads:
        thread.join()
    return results


def row_lines(r: dict) -> list[str]:
    """A row's table lines: its validation volumes, mean, steps reached and training time (and with the prior)."""
    return [
        f"| {r['row']}{suffix} | "
        + " | ".join(f"{d:.3f}" for d in r[key])
        + f" | **{np.mean(r[key]):.3f}** | {r['steps']}/{r['of']} | {r['train_s']:.0f} |"
        for key, suffix in (("dice", ""), ("dice_prior", " + registration prior"))
        if key in r
    ]


def table(results: list[dict]) -> str:
    """The rows as a markdown table."""
    if not results:
        return "no row finished"
    return "\n".join(
        [
            "| row | " + " | ".join(results[0]["cases"]) + " | mean | steps | training s |",
            "|---|" + "---|" * (len(results[0]["cases"]) + 3),
        ]
        + [x for r in results for x in row_lines(r)]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"))
    parser.add_argument("--runs", default=str(HERE.parent / "training" / "runs"))
    parser.add_argument("--config", default=str(HERE.parent / "training" / "cotrain_gpu.json"))
    parser.add_argument("--only", nargs="*", help="row names to run (default: all)")
    parser.add_argument(
        "--deadline",
        type=float,
        default=330.0,
        help="seconds after which rows still training stop and are scored as they stand",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per row")
    parser.add_argument("--volumes", type=int, default=5, help="validation volumes scored (default: all 5)")
    parser.add_argument("--out", help="also write the results (JSON) here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        name, overrides, prior, stop_at = json.loads(args.worker)
        print("RESULT " + json.dumps(score_row(args, name, overrides, prior, stop_at)), flush=True)
        return
    spec = json.loads(Path(args.config).read_text())
    rows = {k: v for k, v in spec["rows"].items() if not args.only or k in args.only}
    results = launch(args, rows, spec.get("prior_rows", []))
    results.sort(key=lambda r: list(rows).index(r["row"]))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    print("\n" + table(results))
    if results:
        print(f"\ndevice: {results[0]['device']}")


if __name__ == "__main__":
    main()
