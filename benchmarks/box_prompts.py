"""Box prompts with LiteMedSAM: how well does one box per structure segment it in 3D, and how fast?

For each validation volume of the OASIS-like one-shot split and each of its 27 eval structures (native 1 mm grid):
the box is the truth's bounding box on the structure's largest axial slice plus `--margin` voxels (what a user
draws); the prompter segments that slice and propagates through the neighbouring slices
(`core/prompting.py`). Printed per structure (mean over the volumes): Dice of the propagated 3D mask against
the truth, and of the box itself extruded through the slices the truth spans (a generous baseline: it knows the
extent); on the boxed slice, Dice of LiteMedSAM's mask and of the filled box against the truth's slice; and the
seconds of an embedding (once per slice, then cached) and of a decoder pass.

    python benchmarks/box_prompts.py --data ../shared/data [--volumes 5] [--margin 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from napari_rrl_medsam.api import load_task, prompter, reorient_canonical
from napari_rrl_medsam.core.prompting import SliceBox


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else 1.0


def truth_box(truth: np.ndarray, margin: int) -> SliceBox:
    """The structure's largest axial slice (canonical axis 2) and its bounding box there, grown by `margin`."""
    z = int(np.argmax(truth.sum(axis=(0, 1))))
    return SliceBox.around(truth[:, :, z], z, margin)


def timing(model) -> dict[str, list[float]]:
    """Record the seconds of each of `model`'s embeddings (one per slice, then cached) and decoder passes."""
    times: dict[str, list[float]] = {"embed": [], "decode": []}
    for name in times:
        call = getattr(model, name)

        def timed(*args, _call=call, _name=name):
            start = time.perf_counter()
            out = _call(*args)
            times[_name].append(time.perf_counter() - start)
            return out

        setattr(model, name, timed)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--volumes", type=int, default=5, help="validation volumes used (first N)")
    parser.add_argument("--margin", type=int, default=3, help="voxels added around the truth's box")
    args = parser.parse_args()
    task = load_task(args.data / "oasis_like" / "dataset.json", split="oneshot", check=False)
    names = task.label_names or {}
    rows: dict[int, list[tuple[float, float, float, float]]] = {}
    times, slices = None, 0
    for case in task.evaluation[: args.volumes]:
        image, labels = case.load()
        prompts = prompter(image)
        times = times or timing(prompts.model)  # one model for every volume
        truth_all = reorient_canonical(labels).array
        start = time.perf_counter()
        for label in task.eval_labels:
            truth = truth_all == label
            box = truth_box(truth, args.margin)
            first, _ = prompts.segment_slice(box)
            mask = prompts.propagate(box)
            slices += int(mask.any(axis=(0, 1)).sum())
            prism = np.zeros_like(truth)
            span = np.nonzero(truth.any(axis=(0, 1)))[0]
            prism[box.x0 : box.x1 + 1, box.y0 : box.y1 + 1, span.min() : span.max() + 1] = True
            plane = truth[:, :, box.z]
            scores = (dice(mask, truth), dice(prism, truth), dice(first, plane), dice(prism[:, :, box.z], plane))
            rows.setdefault(label, []).append(scores)
        mean = np.mean([rows[k][-1][0] for k in task.eval_labels])
        print(f"{case.id}: {time.perf_counter() - start:.0f} s, mean 3D Dice {mean:.3f}", flush=True)
    print(f"\n{'label':>5} {'structure':<28} {'3D: SAM':>8} {'box prism':>10} {'slice: SAM':>11} {'box':>6}")
    for label, values in rows.items():
        cells = " ".join(f"{v:{w}.3f}" for v, w in zip(np.mean(values, axis=0), (8, 10, 11, 6)))
        print(f"{label:>5} {names.get(label, ''):<28} {cells}")
    cells = " ".join(
        f"{v:{w}.3f}" for v, w in zip(np.mean([np.mean(v, axis=0) for v in rows.values()], axis=0), (8, 10, 11, 6))
    )
    print(f"{'mean':>5} {'':<28} {cells}")
    print(
        f"\nseconds on this machine: an embedding {np.median(times['embed']):.2f} (median of {len(times['embed'])}; "
        f"once per slice, then cached), a decoder pass {np.median(times['decode']):.3f} (median of "
        f"{len(times['decode'])}); {slices} propagated slices in all"
    )


if __name__ == "__main__":
    main()
