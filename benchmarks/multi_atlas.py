"""Multi-atlas registration: does each added labelled volume raise the Dice, and which fusion is better?

The learning curve's registration rows (issue 18): on the five validation volumes of the OASIS-like one-shot split
(27 eval structures, native 1 mm grid), the registration model registers 1, 2, 3 and 5 labelled volumes onto each
validation volume (instance optimisation as everywhere, `REFINE_STEPS`) and their warped labels are fused by
majority vote and by the locally weighted vote (`core/fusion.py`). The labelled volumes are the task's atlas
(synth01) and then the first unlabelled training volumes, whose label files stand in, in this benchmark only, for
a user's corrections. Each atlas is registered once per validation volume; the subsets reuse those results.

    python benchmarks/multi_atlas.py --data ../shared/data --registration <registration checkpoint>
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from napari_rrl_medsam.api import REFINE_STEPS, Case, evaluate, load_model, load_task, normalise_intensity
from napari_rrl_medsam.core.fusion import fuse, local_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--registration", type=Path, required=True, help="a registration (or co-trained) checkpoint")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 3, 5])
    args = parser.parse_args()
    root = args.data / "oasis_like"
    task = load_task(root / "dataset.json", split="oneshot", check=False)
    extra = [Case(c.id, c.image, root / "labels" / f"{c.id}.nii.gz") for c in task.unlabelled]
    atlases = [task.atlas.load()] + [c.load() for c in extra[: max(args.counts) - 1]]
    model = load_model(args.registration)
    scores: dict[tuple[int, str], list[float]] = {}
    for case in task.evaluation:
        image, truth = case.load()
        start = time.perf_counter()
        results = [model.register(a, labels, image, REFINE_STEPS) for a, labels in atlases]
        registered = time.perf_counter() - start
        target = normalise_intensity(image.array)
        weights = local_weights(target, [normalise_intensity(r.warped_image.array) for r in results], image.spacing)
        line = []
        for n in args.counts:
            maps = [r.warped_labels.array for r in results[:n]]
            for fusion, w in (("majority", None), ("local", weights[:n])):
                if n == 1 and fusion == "local":
                    continue
                fused = image.with_array(fuse(maps, w), kind="labels")
                dice = evaluate(fused, truth, task.eval_labels, hd95=False).mean_dice
                scores.setdefault((n, fusion), []).append(dice)
                line.append(f"{n} {fusion} {dice:.3f}")
        print(f"{case.id}: {registered / len(atlases):.1f} s per registration; " + ", ".join(line), flush=True)
    ids = [c.id for c in task.evaluation]
    print(f"\n{'labelled volumes':<18} {'fusion':<9} " + " ".join(f"{i:>7}" for i in ids) + f" {'mean':>7}")
    for (n, fusion), values in scores.items():
        print(f"{n:<18} {fusion:<9} " + " ".join(f"{v:7.3f}" for v in values) + f" {np.mean(values):7.3f}")


if __name__ == "__main__":
    main()
