"""One joint registration-segmentation round (issue 14, item 4) on the OASIS-like validation volumes.

    python benchmarks/joint_round.py --data ../shared/data --runs training/runs [--stage registration]

After co-training (`benchmarks/cotrain.py`'s "full" row): (1) the co-trained model segments the unlabelled
volumes; (2) the registration network is fine-tuned from its trained weights with Dice coupling to those
segmentations (`init`, `dice_weight`), and scored alone as the "registration only" row is; (3) co-training
continues from the full model (`init`) on the new registration's pseudo labels, and, as the control that
separates the round from the extra steps, on the old registration's; (4) the self-training round: co-training
continues from the full model on pseudo labels fused from the full model's own predictions and the old
registration's (`pseudo_model`, weight `pseudo_prior_weight`). Each stage is kept in `--runs` and reused.
Mean Dice over the 27 eval labels on each native 1 mm grid, as in `benchmarks/cotrain.py`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from napari_rrl_medsam.api import (
    cotrain,
    evaluate,
    load_model,
    load_task,
    load_volume,
    save_volume,
    segment,
    train_registration,
)

HERE = Path(__file__).parent


def scores(reports) -> str:
    values = [r.mean_dice for r in reports]
    return " | ".join(f"{v:.3f}" for v in values) + f" | **{np.mean(values):.3f}**"


def registration_path(args, runs: Path) -> Path:
    return runs / f"registration_joint_w{args.dice_weight:g}_{args.registration_steps}.pt"


def registration_round(args, task, runs: Path, model_path: Path, old_path: Path, registration_row) -> None:
    """(1) the co-trained model segments the unlabelled volumes; (2) the registration is fine-tuned with Dice
    coupling to them and scored before and after."""
    folder = runs / "joint"
    segmentations = []
    t = time.perf_counter()
    model = load_model(model_path)
    for case in task.unlabelled:
        path = folder / f"{case.id}_labels.nii.gz"
        if not path.exists():
            save_volume(segment(model, case.load()[0]).labels, path)
        segmentations.append(load_volume(path, kind="labels"))
    print(
        f"segmentations of {len(segmentations)} unlabelled volumes by {args.model}: {time.perf_counter() - t:.0f} s",
        flush=True,
    )
    new_path = registration_path(args, runs)
    t = time.perf_counter()
    train_registration(
        task,
        init=old_path,
        out=new_path,
        resume=True,
        config={"steps": args.registration_steps, "dice_weight": args.dice_weight},
        segmentations=segmentations,
    )
    print(
        f"registration fine-tuned {args.registration_steps} steps with Dice coupling (weight "
        f"{args.dice_weight:g}): {time.perf_counter() - t:.0f} s",
        flush=True,
    )
    print("\n| method | " + " | ".join(c.id for c in task.evaluation) + " | mean |\n|---|" + "---|" * 6)
    registration_row("registration (before the round)", old_path)
    registration_row("registration after the round", new_path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"))
    parser.add_argument("--runs", default=str(HERE.parent / "training" / "runs"))
    parser.add_argument("--model", default="cotrain_full.pt", help="the co-trained model in --runs")
    parser.add_argument("--registration-steps", type=int, default=300)
    parser.add_argument("--dice-weight", type=float, default=1.0)
    parser.add_argument("--cotrain-steps", type=int, default=500)
    parser.add_argument(
        "--stage",
        choices=["registration", "cotrain", "all"],
        default="all",
        help="stop after the fine-tuned registration is scored, only the co-training arms, or both",
    )
    parser.add_argument(
        "--arms",
        nargs="*",
        default=["old", "new", "self"],
        help="co-training arms: old (control), new (the round's registration), self (self-training)",
    )
    args = parser.parse_args()
    spec = json.loads((HERE.parent / "training" / "cotrain.json").read_text())
    runs, data = Path(args.runs), Path(args.data)
    task = load_task(data / spec["task"], split=spec["split"], check=False)
    atlas, atlas_labels = task.atlas.load()
    validation = [case.load() for case in task.evaluation]
    refine = spec["settings"].get("refine_steps", 0)
    model_path, old_path = runs / args.model, runs / spec["registration"]

    def registration_row(name: str, path: Path) -> None:
        registration = load_model(path)
        reports = [
            evaluate(
                registration.register(atlas, atlas_labels, img, refine).warped_labels,
                truth,
                task.eval_labels,
                hd95=False,
            )
            for img, truth in validation
        ]
        print(f"| {name} | {scores(reports)} |", flush=True)

    if args.stage != "cotrain":
        registration_round(args, task, runs, model_path, old_path, registration_row)
    if args.stage == "registration":
        return
    new_path = registration_path(args, runs)
    settings = {**spec["settings"], "steps": args.cotrain_steps, "lr": 2e-3, "encoder_lr": 1e-4}
    arms = {
        "old": ("co-training continued, old pseudo labels (control)", old_path, None),
        "new": ("co-training continued, round's pseudo labels", new_path, None),
        "self": ("co-training continued, pseudo labels of the model fused with the registration", old_path, model_path),
    }
    for arm in args.arms:
        name, registration, pseudo_model = arms[arm]
        stem = "cotrain_joint" if args.model == "cotrain_full.pt" else Path(args.model).stem  # a second round: its own
        out = runs / f"{stem}_{arm}_{args.cotrain_steps}.pt"
        t = time.perf_counter()
        cotrain(
            task,
            registration=registration,
            init=model_path,
            out=out,
            resume=True,
            pseudo_model=pseudo_model,
            config=settings,
        )
        print(f"{arm}: {time.perf_counter() - t:.0f} s", flush=True)
        continued = load_model(out)
        reports = [
            evaluate(segment(continued, img).labels, truth, task.eval_labels, hd95=False) for img, truth in validation
        ]
        print(f"| {name} | {scores(reports)} |", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
