"""Ways to use one trained model at inference, on the OASIS-like validation volumes (mean Dice over the 27 eval
labels, native grid): `segment` as it is, with test-time left-right mirroring (`mirror=FREESURFER_LEFT_RIGHT`),
with the registration prior, with both; and, as a diagnosis, the mean of both branches' probabilities.

    python benchmarks/inference_variants.py --data ../shared/data --runs training/runs [--model cotrain_full.pt]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from napari_rrl_medsam.api import FREESURFER_LEFT_RIGHT, evaluate, load_model, load_task, segment
from napari_rrl_medsam.core.registration import intensities
from napari_rrl_medsam.core.segmentation import predict_probabilities
from napari_rrl_medsam.core.warp import argmax_resampled

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"))
    parser.add_argument("--runs", default=str(HERE.parent / "training" / "runs"))
    parser.add_argument("--model", default="cotrain_full.pt", help="the co-trained model in --runs")
    parser.add_argument("--refine-steps", type=int, default=25, help="registration refinement for the prior")
    args = parser.parse_args()
    torch.set_num_threads(2)
    spec = json.loads((HERE.parent / "training" / "cotrain.json").read_text())
    task = load_task(Path(args.data) / spec["task"], split=spec["split"], check=False)
    model = load_model(Path(args.runs) / args.model)
    atlas = task.atlas.load()
    lut = np.array(model.classes)
    rows: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}

    def score(name: str, run) -> None:
        t = time.perf_counter()
        labels = run()
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t
        rows.setdefault(name, []).append(evaluate(labels, truth, task.eval_labels, hd95=False).mean_dice)

    for case in task.evaluation:
        image, truth = case.load()
        t = time.perf_counter()
        prior = model.register(*atlas, image, args.refine_steps).warped_labels
        registration_s = time.perf_counter() - t
        score("segment", lambda: segment(model, image).labels)
        score("segment, mirrored", lambda: segment(model, image, mirror=FREESURFER_LEFT_RIGHT).labels)
        score("segment + registration prior (0.3)", lambda: segment(model, image, prior=prior).labels)
        score(
            "segment, mirrored + registration prior (0.3)",
            lambda: segment(model, image, prior=prior, mirror=FREESURFER_LEFT_RIGHT).labels,
        )
        for name in seconds:
            if "prior" in name:
                seconds[name] += registration_s

        def both_branches():
            x = intensities(image, model.grid)[0, 0].to(model.device)
            g, m = predict_probabilities(model.parts, x, model.config)
            return lut[argmax_resampled(((g + m) / 2).cpu().numpy(), model.grid, image.grid)]

        score("diagnosis: mean of both branches (AP and M_g)", both_branches)
        print(f"{case.id} done", flush=True)
    cases = [c.id for c in task.evaluation]
    print("\n| prediction | " + " | ".join(cases) + " | mean | s per volume |\n|---|" + "---|" * (len(cases) + 2))
    for name, values in rows.items():
        print(
            f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + f" | **{np.mean(values):.3f}** | "
            f"{seconds[name] / len(values):.1f} |"
        )


if __name__ == "__main__":
    main()
