"""Registration benchmark on the OASIS-like set: affine only, classical demons, and ours (with and without
instance optimisation), mean Dice over the 27 eval labels on each validation volume's native 1 mm grid,
folding, time per pair; plus the Dice of our pseudo labels on the unlabelled training volumes (their
label files are read here for this diagnostic only).

    python benchmarks/registration.py --data ../shared/data --model training/runs/registration.pt [--train]

--train first trains the model with training/registration.json (resuming if the checkpoint exists).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from registration_baselines import demons

from napari_rrl_medsam.api import evaluate, load_model, load_task, load_volume, resample, to_working, train_registration
from napari_rrl_medsam.core.warp import warp

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"))
    parser.add_argument("--config", default=str(HERE.parent / "training" / "registration.json"))
    parser.add_argument("--model", default=str(HERE.parent / "training" / "runs" / "registration.pt"))
    parser.add_argument("--train", action="store_true")
    parser.add_argument("--skip-demons", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    spec = json.loads(Path(args.config).read_text())
    data = Path(args.data)
    task = load_task(data / spec["task"], split=spec["split"], check=False)
    if args.train:
        start = time.perf_counter()
        train_registration(task, encoder=spec["encoder"], out=args.model, resume=True, config=spec["settings"])
        print(f"training: {time.perf_counter() - start:.0f} s")
    model = load_model(args.model)
    atlas, atlas_labels = task.atlas.load()
    atlas_work = to_working(atlas, spec["settings"]["spacing"])
    refine = spec["refine_steps"]
    cols = ["affine", "demons", "ours", f"ours+{refine}"]
    timing = f"demons s | ours s | ours+{refine} s | folding demons / ours / ours+{refine}"
    print(f"\n| volume | {' | '.join(cols)} | {timing} |")
    print("|---|" + "---|" * (len(cols) + 4))
    rows = []
    for case in task.evaluation:
        image, truth = case.load()
        dice = {"affine": evaluate(resample(atlas_labels, truth.grid), truth, task.eval_labels, hd95=False).mean_dice}
        times, folds = {}, {}
        if not args.skip_demons:
            t = time.perf_counter()
            field = demons(resample(image, atlas_work.grid), atlas_work)
            times["demons"] = time.perf_counter() - t
            dice["demons"] = evaluate(
                warp(atlas_labels, field, truth.grid), truth, task.eval_labels, hd95=False
            ).mean_dice
            folds["demons"] = field.folding_fraction()
        for name, steps in (("ours", 0), (f"ours+{refine}", refine)):
            t = time.perf_counter()
            result = model.register(atlas, atlas_labels, image, refine_steps=steps)
            times[name] = time.perf_counter() - t
            dice[name] = evaluate(result.warped_labels, truth, task.eval_labels, hd95=False).mean_dice
            folds[name] = result.folding
        rows.append((dice, times, folds))
        print(
            f"| {case.id} | "
            + " | ".join(f"{dice.get(c, float('nan')):.3f}" for c in cols)
            + " | "
            + " | ".join(f"{times.get(c, float('nan')):.1f}" for c in ("demons", "ours", f"ours+{refine}"))
            + " | "
            + " / ".join(f"{100 * folds.get(c, float('nan')):.2f}%" for c in ("demons", "ours", f"ours+{refine}"))
            + " |",
            flush=True,
        )

    def mean(i, key):
        return np.mean([r[i].get(key, np.nan) for r in rows])

    print(
        "| **mean** | "
        + " | ".join(f"**{mean(0, c):.3f}**" for c in cols)
        + " | "
        + " | ".join(f"{mean(1, c):.1f}" for c in ("demons", "ours", f"ours+{refine}"))
        + " | "
        + " / ".join(f"{100 * mean(2, c):.2f}%" for c in ("demons", "ours", f"ours+{refine}"))
        + " |"
    )
    print("\npseudo labels on the unlabelled training volumes (diagnostic: their label files never feed training)")
    scores = {0: [], refine: []}
    for case in task.unlabelled:
        image = load_volume(case.image)
        truth = load_volume(data / Path(spec["task"]).parent / "labels" / case.image.name, kind="labels")
        for steps in scores:
            result = model.register(atlas, atlas_labels, image, refine_steps=steps)
            scores[steps].append(evaluate(result.warped_labels, truth, task.eval_labels, hd95=False).mean_dice)
    print(
        f"  ours {np.mean(scores[0]):.3f}, ours+{refine} {np.mean(scores[refine]):.3f} "
        f"(mean over {len(scores[0])} volumes)"
    )


if __name__ == "__main__":
    main()
