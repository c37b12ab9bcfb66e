"""How good are a self-training round's pseudo labels? On the OASIS-like unlabelled training volumes (their label
files read here for diagnosis only, never for training), working-grid mean Dice over the 27 eval labels of the
registration's pseudo labels, of a co-trained model's own labels, and of the two fused as the co-training engine
fuses them (`pseudo_model`; registration weight `pseudo_prior_weight`).

    python benchmarks/fused_pseudo_labels.py --data ../shared/data --runs training/runs [--volumes 5]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from napari_rrl_medsam.api import evaluate, load_model, load_task, load_volume, resample

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"))
    parser.add_argument("--runs", default=str(HERE.parent / "training" / "runs"))
    parser.add_argument("--model", default="cotrain_full.pt", help="the co-trained model in --runs")
    parser.add_argument(
        "--weights", type=float, nargs="*", default=[0.2, 0.3, 0.4], help="registration weights of the fused labels"
    )
    parser.add_argument("--volumes", type=int, help="only the first so many unlabelled volumes")
    args = parser.parse_args()
    torch.set_num_threads(2)
    spec = json.loads((HERE.parent / "training" / "cotrain.json").read_text())
    runs, data = Path(args.runs), Path(args.data)
    task = load_task(data / spec["task"], split=spec["split"], check=False)
    registration, model = load_model(runs / spec["registration"]), load_model(runs / args.model)
    refine = spec["settings"].get("refine_steps", 0)
    atlas, atlas_labels = task.atlas.load()
    columns = ["registration", "model", *(f"fused {w:g}" for w in args.weights)]
    print("| volume | " + " | ".join(columns) + " | s |\n|---|" + "---|" * (len(columns) + 1))
    rows = []
    for case in task.unlabelled[: args.volumes]:
        t = time.perf_counter()
        image = case.load()[0]
        truth = load_volume(case.image.parent.parent / "labels" / case.image.name, kind="labels")
        truth = resample(truth, registration.grid, order=0).array
        pseudo = registration.pseudo_labels(atlas, atlas_labels, image, refine)
        labels = [pseudo, model.working_labels(image), *(model.working_labels(image, pseudo, w) for w in args.weights)]
        rows.append([evaluate(a, truth, task.eval_labels, hd95=False).mean_dice for a in labels])
        print(
            f"| {case.id} | " + " | ".join(f"{v:.3f}" for v in rows[-1]) + f" | {time.perf_counter() - t:.0f} |",
            flush=True,
        )
    print("| **mean** | " + " | ".join(f"**{v:.3f}**" for v in np.mean(rows, 0)) + " | |")


if __name__ == "__main__":
    main()
