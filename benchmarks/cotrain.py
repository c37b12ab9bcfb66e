"""Co-training benchmark: RRL-MedSAM full and each ablation, against our registration alone, on the OASIS-like
validation volumes (mean Dice over the 27 eval labels on each native 1 mm grid), with per-structure Dice of
the full model and training / segmentation times on this CPU.

    python benchmarks/cotrain.py --data ../shared/data --runs training/runs [--only full] [--seed 1] [--threads 1]

Trains what is missing (resuming interrupted runs) from training/cotrain.json, and first the registration
network from training/registration.json (with cotrain.json's `registration_settings` on top, e.g. fewer steps)
if the runs folder has none. A row with "pseudo_model" (a checkpoint in the runs folder, trained first by its own
row) is a self-training row: its pseudo labels fuse that model's predictions with the registration's.
Training time is the co-training steps' own time, which each checkpoint accumulates over its runs; the pseudo
labels (computed once, shared by all rows) are timed apart. Rows in --propagated-rows are also scored with the
propagated atlases' prior: the model segments the task's unlabelled volumes into `<checkpoint>_propagated/`
(`api.propagate_atlases`), and each validation volume is segmented with the atlas and those registered onto it and
fused (local vote) as its prior; the fused registration alone is a row too.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import torch

from napari_rrl_medsam.api import (
    cotrain,
    evaluate,
    load_model,
    load_task,
    propagate_atlases,
    segment,
    train_registration,
)
from napari_rrl_medsam.core.checkpoint import load_checkpoint

HERE = Path(__file__).parent


def checkpoint_name(ablation: str, seed: int | None = None) -> str:
    """The runs-folder file of a row of training/cotrain.json (with another seed than the recipe's: its own)."""
    stem = f"cotrain_{re.sub('[^a-z]+', '_', ablation.lower())}"
    return f"{stem}_seed{seed}.pt" if seed is not None else f"{stem}.pt"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"))
    parser.add_argument("--config", default=str(HERE.parent / "training" / "cotrain.json"))
    parser.add_argument("--runs", default=str(HERE.parent / "training" / "runs"))
    parser.add_argument("--only", nargs="*", help="ablation names to run (default: all)")
    parser.add_argument(
        "--seed",
        type=int,
        help="train and score each row with this seed instead of the recipe's "
        "(its own checkpoints, `_seed<n>`): the spread between seeds sizes the rows' differences",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 each when two runs share 2 cores)")
    parser.add_argument(
        "--prior-weight",
        type=float,
        default=0.3,
        help="weight of the registration's labels in the fused row (segment's prior_weight)",
    )
    parser.add_argument(
        "--prior-rows",
        nargs="*",
        default=["full"],
        help="rows also scored with the registration prior (default: %(default)s)",
    )
    parser.add_argument(
        "--propagated-rows",
        nargs="*",
        default=["full"],
        help="rows also scored with the propagated atlases' prior (default: %(default)s)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = json.loads(Path(args.config).read_text())
    runs, data = Path(args.runs), Path(args.data)
    task = load_task(data / spec["task"], split=spec["split"], check=False)
    if not (runs / spec["registration"]).exists():  # one command from a clean checkout: train it first
        reg_spec = json.loads((HERE.parent / "training" / "registration.json").read_text())
        settings = {**reg_spec["settings"], **spec.get("registration_settings", {})}
        print(
            f"training the registration network with training/registration.json and {settings} "
            f"-> {runs / spec['registration']}"
        )
        train_registration(
            load_task(data / reg_spec["task"], split=reg_spec["split"], check=False),
            encoder=reg_spec["encoder"],
            out=runs / spec["registration"],
            resume=True,
            config=settings,
        )
    registration = load_model(runs / spec["registration"])
    atlas, atlas_labels = task.atlas.load()
    validation = [case.load() for case in task.evaluation]
    names = task.label_names or {}
    refine = spec["settings"].get("refine_steps", 0)
    results = {}

    def row(name: str) -> str:
        reports, train_s, per = results[name]
        scores = [r.mean_dice for r in reports]
        return (
            f"| {name} | "
            + " | ".join(f"{s:.3f}" for s in scores)
            + f" | **{np.mean(scores):.3f}** | "
            + (f"{train_s:.0f}" if train_s else "-")
            + f" | {per:.1f} |"
        )

    def propagated_rows(name: str, model, folder: Path, train_s) -> None:
        """The model's propagated atlases (made once, kept in `folder`): their fused registration alone, and the
        model with it as its prior."""
        t = time.perf_counter()
        for _ in propagate_atlases(model, task, folder):
            pass
        made = time.perf_counter() - t
        print(f"propagated atlases of {len(task.unlabelled)} volumes: {made:.0f} s")
        t = time.perf_counter()
        segmented = [
            segment(model, img, atlas=(atlas, atlas_labels), labelled=folder, prior_weight=args.prior_weight)
            for img, _ in validation
        ]
        per = (time.perf_counter() - t) / len(validation)
        alone = f"{name}: propagated atlases alone (the atlas + {len(task.unlabelled)}, local vote)"
        prior = f"{name} + propagated atlases prior (weight {args.prior_weight})"
        truths = [truth for _, truth in validation]
        fused = [r.registration.labels for r in segmented]
        for key, labels in ((alone, fused), (prior, [r.labels for r in segmented])):
            reports = [evaluate(lab, truth, task.eval_labels, hd95=False) for lab, truth in zip(labels, truths)]
            results[key] = (reports, train_s, per)
            print(row(key), flush=True)

    t = time.perf_counter()
    warped = [registration.register(atlas, atlas_labels, img, refine).warped_labels for img, _ in validation]
    per_reg = (time.perf_counter() - t) / len(validation)
    results["registration only"] = (
        [evaluate(w, truth, task.eval_labels, hd95=False) for w, (_, truth) in zip(warped, validation)],
        None,
        per_reg,
    )
    print(row("registration only"), flush=True)  # each row as soon as it is known: long runs can be read
    t = time.perf_counter()
    for case in task.unlabelled:  # remembered by the registration model for every row below
        registration.pseudo_labels(atlas, atlas_labels, case.load()[0], refine)
    print(f"pseudo labels of {len(task.unlabelled)} volumes: {time.perf_counter() - t:.0f} s", flush=True)
    full = None
    for ablation, overrides in spec["ablations"].items():
        if args.only and ablation not in args.only:
            continue
        settings, name, seed = {**spec["settings"], **overrides}, ablation, None
        if args.seed is not None and args.seed != settings.get("seed"):
            settings["seed"] = seed = args.seed
            name = f"{ablation} (seed {seed})"
        out = runs / checkpoint_name(ablation, seed)
        pseudo_model = settings.pop("pseudo_model", None)
        cotrain(
            task,
            registration=registration,
            out=out,
            resume=True,
            pseudo_model=runs / pseudo_model if pseudo_model else None,
            config=settings,
        )
        train_s = load_checkpoint(out, "rrl-medsam").get("elapsed")
        model = load_model(out)
        t = time.perf_counter()
        reports = [
            evaluate(segment(model, img).labels, truth, task.eval_labels, hd95=False) for img, truth in validation
        ]
        results[name] = (reports, train_s, (time.perf_counter() - t) / len(validation))
        print(row(name), flush=True)
        if ablation == "full":
            full = name
        if ablation in args.prior_rows:  # an option, not the method: the registration's labels as a prior
            t = time.perf_counter()
            fused = [
                evaluate(
                    segment(model, img, prior=w, prior_weight=args.prior_weight).labels,
                    truth,
                    task.eval_labels,
                    hd95=False,
                )
                for w, (img, truth) in zip(warped, validation)
            ]
            fused_name = f"{name} + registration prior (weight {args.prior_weight})"
            results[fused_name] = (fused, train_s, (time.perf_counter() - t) / len(validation) + per_reg)
            print(row(fused_name), flush=True)
        if ablation in args.propagated_rows:
            propagated_rows(name, model, out.with_name(f"{out.stem}_propagated"), train_s)
    print("\n| method | " + " | ".join(c.id for c in task.evaluation) + " | mean | training s | s per volume |")
    print("|---|" + "---|" * (len(validation) + 3))
    for name in results:
        print(row(name))
    if full is not None:
        print(f"\nper-structure Dice, {full} (mean over validation volumes)")
        for label in task.eval_labels:
            print(
                f"  {label:>3} {names.get(label, ''):<28} {np.nanmean([r.dice[label] for r in results[full][0]]):.3f}"
            )


if __name__ == "__main__":
    main()
