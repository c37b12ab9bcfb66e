"""What an exact synthetic pair costs per co-training step, and what it looks like.

On the OASIS-like one-shot split with a trained registration network: builds the synthetic-pair generator as
co-training does (one network pass per unlabelled volume), then times drawing a slab of each appearance against
one co-training step of the recipe (slab 8, 128 px; the engine's own step with the recipe's settings), and
reports how far each appearance moves the atlas's intensities towards the unlabelled volumes (mean absolute
intensity change on the slab, labels identical by construction). Optionally saves a few pairs as NIfTI to look at.

    python benchmarks/synthetic_cost.py --data ../shared/data --registration training/runs/registration_1000.pt
        [--save-examples DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from napari_rrl_medsam.api import load_model, load_task
from napari_rrl_medsam.core.registration import intensities
from napari_rrl_medsam.core.resample import resample
from napari_rrl_medsam.core.synthetic import APPEARANCES, SyntheticPairs

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"))
    parser.add_argument("--registration", required=True)
    parser.add_argument("--draws", type=int, default=50)
    parser.add_argument("--save-examples", help="folder for a few synthetic images and labels (NIfTI)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    spec = json.loads((HERE.parent / "training" / "cotrain.json").read_text())
    settings = spec["settings"]
    task = load_task(Path(args.data) / spec["task"], split=spec["split"], check=False)
    registration = load_model(args.registration)
    grid = registration.grid
    atlas, atlas_labels = task.atlas.load()
    a = intensities(atlas, grid)[0, 0]
    values = np.unique(atlas_labels.array)
    lut = np.zeros(int(values.max()) + 1, np.int64)
    lut[values] = np.arange(len(values))
    classes = torch.from_numpy(lut[resample(atlas_labels, grid).array])
    volumes = [case.load()[0] for case in task.unlabelled]
    t = time.perf_counter()
    velocities = [registration.velocity(atlas, v) for v in volumes]
    images = [intensities(v, grid)[0, 0] for v in volumes]
    print(f"registration fields of {len(volumes)} volumes: {time.perf_counter() - t:.1f} s (once per training)")
    z = np.nonzero(classes.numpy().reshape(-1, classes.shape[2]).any(0))[0]
    for appearance in APPEARANCES:
        pairs = SyntheticPairs(
            a,
            classes,
            velocities,
            images,
            registration.net.config.scaling_and_squaring_steps,
            appearance,
            settings["field_mode"],
            settings["synthetic_beta"],
        )
        rng = np.random.default_rng(0)
        change, t = [], time.perf_counter()
        for _ in range(args.draws):
            start = int(rng.integers(z.min(), z.max() - settings["slab"]))
            image, _ = pairs.sample(rng, start, settings["slab"])
            change.append(float((image - a[:, :, start : start + settings["slab"]]).abs().mean()))
        per = (time.perf_counter() - t) / args.draws
        print(
            f"{appearance:>8}: {1000 * per:.0f} ms per slab; mean |intensity change| vs the atlas slab "
            f"{np.mean(change):.3f}"
        )
        if args.save_examples:
            from napari_rrl_medsam.api import Volume, save_volume

            out = Path(args.save_examples)
            for k in range(3):
                image, labels = pairs.sample(np.random.default_rng(k), 0, a.shape[2])
                save_volume(Volume(image.numpy(), grid.affine), out / f"{appearance}{k}.nii.gz", overwrite=True)
                save_volume(
                    Volume(values[labels.numpy()].astype(np.uint8), grid.affine, "labels"),
                    out / f"{appearance}{k}_labels.nii.gz",
                    overwrite=True,
                )
    step_time(task, registration, settings)


def step_time(task, registration, settings) -> None:
    """Seconds per co-training step of the recipe with and without synthetic pairs (20 steps each)."""
    import tempfile

    from napari_rrl_medsam.api import cotrain

    for name, override in (
        ("no synthetic pairs", {"synthetic_probability": 0.0}),
        ("all synthetic pairs", {"synthetic_probability": 1.0 - settings["atlas_probability"]}),
    ):
        with tempfile.TemporaryDirectory() as tmp:
            run = cotrain(
                task,
                registration=registration,
                out=Path(tmp) / "m.pt",
                validation=False,
                events=True,
                config={
                    **settings,
                    **override,
                    "steps": 25,
                    "refine_steps": 0,
                    "checkpoint_every": 1000,
                    "preview_every": 0,
                },
            )
            times = [time.perf_counter() for e in run if e.stage == "co-training"]
        print(f"co-training step, {name}: {np.mean(np.diff(times[5:])):.2f} s (steps 6-25)")


if __name__ == "__main__":
    main()
