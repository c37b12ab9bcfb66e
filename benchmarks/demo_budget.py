"""The demo's budget on the bundled phantom: how the co-trained model's Dice grows with co-training steps,
against the registration that teaches it, and what each stage costs on this CPU.

Trains the registration network once (kept in `--runs`, reused by later calls), then co-trains with the given
settings, printing the validation Dice (working grid, all three targets with their held-back labels) every
`validate_every` steps, and at the end the native-grid mean Dice of no registration / registration /
RRL-MedSAM (/ + registration prior) per target, with per-structure Dice. With a constant learning rate
(`lr_schedule` "constant") the curve's model at step n is the model a run of n steps ends with.

    python benchmarks/demo_budget.py --tag s96 --settings '{"steps": 600, "image_size": 96,
        "lr_schedule": "constant", "validate_every": 100}' [--registration-steps 150] [--refine-steps 5] [--prior]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from napari_rrl_medsam.api import (
    cotrain,
    evaluate,
    load_model,
    load_volume,
    register,
    resample,
    sample_task,
    segment,
    train_registration,
)
from napari_rrl_medsam.data.sample import held_back_labels

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tag", required=True, help="name of this run's co-training checkpoint in --runs")
    parser.add_argument("--settings", default="{}", help="co-training settings (JSON, CotrainConfig fields)")
    parser.add_argument("--registration-steps", type=int, default=150)
    parser.add_argument("--refine-steps", type=int, default=5)
    parser.add_argument("--runs", default=str(HERE.parent / "training" / "runs" / "demo"))
    parser.add_argument("--prior", action="store_true", help="also score the model with the registration prior")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = Path(args.runs)
    task = sample_task()
    atlas, atlas_labels = task.atlas.load()
    cases = [
        (case.id, case.load()[0], load_volume(held_back_labels(case.id), kind="labels"))
        for case in task.unlabelled + task.evaluation
    ]
    reg_path = runs / f"registration_{args.registration_steps}.pt"
    if not reg_path.exists():
        t = time.perf_counter()
        train_registration(task, out=reg_path, config={"steps": args.registration_steps})
        print(f"registration network, {args.registration_steps} steps: {time.perf_counter() - t:.0f} s", flush=True)
    registration = load_model(reg_path)
    settings = {
        "steps": 200,
        "refine_steps": args.refine_steps,
        "validate_every": 50,
        "preview_every": 0,
        **json.loads(args.settings),
    }  # previews are for napari's live layers: none here
    out = runs / f"cotrain_{args.tag}.pt"
    out.unlink(missing_ok=True)  # a fresh run: its times are the point
    t = time.perf_counter()
    validation = [(i, lab) for _, i, lab in cases]
    for event in cotrain(task, registration=registration, out=out, validation=validation, config=settings, events=True):
        if event.metrics:
            print(
                f"  step {event.step}: {time.perf_counter() - t:.0f} s, validation Dice "
                f"{event.metrics['val_dice']:.3f} (general branch {event.metrics['val_dice_general']:.3f})",
                flush=True,
            )
    print(
        f"co-training {settings['steps']} steps with {settings}: {time.perf_counter() - t:.0f} s "
        "(pseudo labels and validations included)",
        flush=True,
    )
    model = load_model(out)
    for name, image, truth in cases:
        warped = register(registration, (atlas, atlas_labels), image, args.refine_steps).warped_labels
        before = evaluate(resample(atlas_labels, image.grid), truth, task.eval_labels, hd95=False)
        reg = evaluate(warped, truth, task.eval_labels, hd95=False)
        t = time.perf_counter()
        result = segment(model, image)
        seconds = time.perf_counter() - t
        seg = evaluate(result.labels, truth, task.eval_labels, hd95=False)
        line = (
            f"{name}: no registration {before.mean_dice:.3f}, registration {reg.mean_dice:.3f}, "
            f"RRL-MedSAM {seg.mean_dice:.3f} ({seconds:.1f} s)"
        )
        if args.prior:
            fused = evaluate(segment(model, image, prior=warped).labels, truth, task.eval_labels, hd95=False)
            line += f", + registration prior {fused.mean_dice:.3f}"
        print(line)
        print(
            "  per structure, registration / RRL-MedSAM: "
            + " ".join(f"{lab}:{reg.dice[lab]:.2f}/{seg.dice[lab]:.2f}" for lab in task.eval_labels),
            flush=True,
        )


if __name__ == "__main__":
    main()
