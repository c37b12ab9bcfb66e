"""Does the co-trained model learn the anatomy, or the registration's answers it was trained on?

For each co-trained checkpoint, on the ten unlabelled training volumes (their label files serve here as
diagnostics only, never training) and the five validation volumes of the OASIS-like one-shot split, on each
native grid and over the 27 eval labels:

- Dice of the registration's labels (the pseudo labels, +refine steps as in training) and of the model, vs truth;
- agreement: Dice of the model against the registration's labels;
- corrected: of the voxels the registration labels wrongly, the share the model labels right;
- broken: of the voxels the registration labels right, the share the model labels wrongly.

A model that only imitates its pseudo labels agrees with them far more than either agrees with the truth, and
corrects few of their errors; the paper's premise is that the segmentation network corrects some of them.

    python benchmarks/pseudo_label_bound.py --data ../shared/data --runs training/runs [--models full "no DSKD"]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from cotrain import checkpoint_name  # benchmarks/cotrain.py: the same runs folder

from napari_rrl_medsam.api import evaluate, load_model, load_task, load_volume, segment

HERE = Path(__file__).parent


def voxel_shares(model: np.ndarray, reg: np.ndarray, truth: np.ndarray, labels: list[int]) -> tuple[float, float]:
    """(corrected, broken) over the voxels any of the three puts in an eval structure."""
    keep = np.asarray(labels)
    model, reg, truth = (np.where(np.isin(a, keep), a, 0) for a in (model, reg, truth))
    region = (model > 0) | (reg > 0) | (truth > 0)
    reg_right = (reg == truth)[region]
    model_right = (model == truth)[region]
    return float(model_right[~reg_right].mean()), float((~model_right[reg_right]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"))
    parser.add_argument("--config", default=str(HERE.parent / "training" / "cotrain.json"))
    parser.add_argument("--runs", default=str(HERE.parent / "training" / "runs"))
    parser.add_argument("--models", nargs="*", help="ablation names of training/cotrain.json (default: all trained)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    spec = json.loads(Path(args.config).read_text())
    runs, data = Path(args.runs), Path(args.data)
    task = load_task(data / spec["task"], split=spec["split"], check=False)
    refine = spec["settings"].get("refine_steps", 0)
    registration = load_model(runs / spec["registration"])
    atlas, atlas_labels = task.atlas.load()
    names = [n for n in spec["ablations"] if (args.models is None or n in args.models)]
    paths = {n: runs / checkpoint_name(n) for n in names}
    models = {n: load_model(p) for n, p in paths.items() if p.exists()}
    sets = {"training (pseudo-labelled)": task.unlabelled, "validation": task.evaluation}
    print("| model | volumes | registration vs truth | model vs truth | model vs registration | corrected | broken |")
    print("|---|---|---|---|---|---|---|")
    for set_name, cases in sets.items():
        rows: dict[str, list[tuple[float, ...]]] = {n: [] for n in models}
        for case in cases:
            image, truth = case.load()
            if truth is None:  # an unlabelled training volume: its held-back label file, for diagnosis only
                truth = load_volume(case.image.parent.parent / "labels" / case.image.name, kind="labels")
            reg = registration.register(atlas, atlas_labels, image, refine).warped_labels
            reg_dice = evaluate(reg, truth, task.eval_labels, hd95=False).mean_dice
            for n, model in models.items():
                seg = segment(model, image).labels
                shares = voxel_shares(seg.array, reg.array, truth.array, task.eval_labels)
                rows[n].append(
                    (
                        reg_dice,
                        evaluate(seg, truth, task.eval_labels, hd95=False).mean_dice,
                        evaluate(seg, reg, task.eval_labels, hd95=False).mean_dice,
                        *shares,
                    )
                )
        for n, values in rows.items():
            m = np.mean(values, axis=0)
            print(
                f"| {n} | {set_name} ({len(values)}) | {m[0]:.3f} | {m[1]:.3f} | {m[2]:.3f} | "
                f"{100 * m[3]:.1f}% | {100 * m[4]:.1f}% |",
                flush=True,
            )


if __name__ == "__main__":
    main()
