"""Box prompts with LiteMedSAM: how well does one box per structure segment it in 3D, and how fast?

For each validation volume of the OASIS-like one-shot split and each of its 27 eval structures (native 1 mm grid):
the box is the truth's bounding box on the structure's largest axial slice plus `--margin` voxels (what a user
draws); the prompter segments that slice and propagates through the neighbouring slices
(`core/prompting.py`). Printed per structure (mean over the volumes): Dice of the propagated 3D mask against
the truth; on the boxed slice, Dice of LiteMedSAM's mask and of the box itself (filled) against the truth's slice;
and the seconds per slice: an embedding (once per slice, then cached) and a decoder pass.

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


def timed(prompts, box: SliceBox) -> tuple[np.ndarray, float, float]:
    """The slice's mask, and the seconds of its embedding (0 when cached) and of one decoder pass."""
    start = time.perf_counter()
    prompts._embedding(box.z)
    embedded = time.perf_counter()
    mask, _ = prompts.segment_slice(box)
    return mask, embedded - start, time.perf_counter() - embedded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--volumes", type=int, default=5, help="validation volumes used (first N)")
    parser.add_argument("--margin", type=int, default=3, help="voxels added around the truth's box")
    args = parser.parse_args()
    task = load_task(args.data / "oasis_like" / "dataset.json", split="oneshot", check=False)
    names = task.label_names or {}
    rows: dict[int, list[tuple[float, float, float]]] = {}
    embed_s, decode_s, slices = [], [], 0
    for case in task.evaluation[: args.volumes]:
        image, labels = case.load()
        prompts = prompter(image)
        truth_all = reorient_canonical(labels).array
        start = time.perf_counter()
        for label in task.eval_labels:
            truth = truth_all == label
            box = truth_box(truth, args.margin)
            first, embed, decode = timed(prompts, box)
            embed_s += [embed] if embed else []
            decode_s.append(decode)
            mask = prompts.propagate(box)
            slices += int(mask.any(axis=(0, 1)).sum())
            filled = np.zeros_like(first)
            filled[box.x0 : box.x1 + 1, box.y0 : box.y1 + 1] = True
            plane = truth[:, :, box.z]
            rows.setdefault(label, []).append((dice(mask, truth), dice(first, plane), dice(filled, plane)))
        print(
            f"{case.id}: {time.perf_counter() - start:.0f} s, mean 3D Dice "
            f"{np.mean([rows[k][-1][0] for k in task.eval_labels]):.3f}",
            flush=True,
        )
    print(f"\n{'label':>5} {'structure':<28} {'3D Dice':>8} {'slice: SAM':>11} {'box':>6}")
    for label, values in rows.items():
        d3, ds, db = np.mean(values, axis=0)
        print(f"{label:>5} {names.get(label, ''):<28} {d3:8.3f} {ds:11.3f} {db:6.3f}")
    d3, ds, db = np.mean([np.mean(v, axis=0) for v in rows.values()], axis=0)
    print(f"{'mean':>5} {'':<28} {d3:8.3f} {ds:11.3f} {db:6.3f}")
    print(
        f"\nseconds per slice on this machine: embedding {np.median(embed_s):.3f} (median of {len(embed_s)}; once "
        f"per slice, then cached), decoder {np.median(decode_s):.3f} (median of {len(decode_s)}); "
        f"{slices} propagated slices in all"
    )


if __name__ == "__main__":
    main()
