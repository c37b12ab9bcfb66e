"""DSKD benchmark: how close each student's embeddings are to the teacher's, and what each costs.

Held-out sets: the BSDS500 validation photographs and axial slices of the OASIS-like validation
volumes. Students: random init, stage 1 only, stage 2 only, both stages (from the recipe's runs).

    python benchmarks/dskd_fidelity.py --data ../shared/data --runs training/runs
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from napari_rrl_medsam.api import load_task, load_volume
from napari_rrl_medsam.core.cache import EmbeddingCache
from napari_rrl_medsam.core.engines.distill import fidelity, load_encoder
from napari_rrl_medsam.core.inputs import natural_images, volume_slices
from napari_rrl_medsam.core.models.encoder import (
    SAM_VIT_B_ENCODER_PARAMS,
    EncoderConfig,
    LightEncoder,
    count_parameters,
)
from napari_rrl_medsam.core.teachers import get_teacher

HERE = Path(__file__).parent


def per_slice_seconds(fn, images, repeats: int = 1) -> float:
    with torch.no_grad():
        fn(images[:1])  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            for i in range(len(images)):
                fn(images[i : i + 1])
    return (time.perf_counter() - start) / (repeats * len(images))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"))
    parser.add_argument("--runs", default=str(HERE.parent / "training" / "runs"))
    parser.add_argument("--config", default=str(HERE.parent / "training" / "general_encoder.json"))
    parser.add_argument("--timing-slices", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-timing", action="store_true", help="fidelity only (e.g. while the CPU is busy)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = json.loads(Path(args.config).read_text())
    s = spec["settings"]
    data, runs = Path(args.data), Path(args.runs)
    teacher = get_teacher(spec["teacher"])
    cache = EmbeddingCache()
    task = load_task(data / spec["task"], split=spec["split"], check=False)
    sets = {
        "natural (bsds500/val)": natural_images(data / "bsds500" / "val"),
        "medical (validation slices)": torch.cat(
            [
                volume_slices(load_volume(c.image), s["axis"], s["spacing"], 256, s["slices_per_volume"])
                for c in task.evaluation
            ]
        ),
    }
    targets = {name: cache.embed(teacher, images) for name, images in sets.items()}
    torch.manual_seed(s["seed"])
    students = {"random init": LightEncoder(EncoderConfig()).eval()}
    for label, file in (
        ("stage 1 only", "stage1.pt"),
        ("stage 2 only", "stage2_only.pt"),
        ("both stages, no replay", "both_noreplay.pt"),
        ("both stages, replay", "both_replay.pt"),
        ("both stages", "both.pt"),
    ):
        if (runs / file).exists():
            students[label] = load_encoder(runs / file)
    print(f"teacher: {teacher.id} ({teacher.n_parameters / 1e6:.2f} M parameters)")
    print(f"\n| student | {' | '.join(f'{n} cosine | {n} MSE' for n in sets)} |")
    print("|---|" + "---|---|" * len(sets))
    for label, student in students.items():
        cells = []
        for name, images in sets.items():
            f = fidelity(student, images, targets[name])
            cells += [f"{f['cosine']:.3f}", f"{f['mse']:.4f}"]
        print(f"| {label} | {' | '.join(cells)} |")
    slices = sets["medical (validation slices)"][: args.timing_slices]
    student = students.get("both stages", students["random init"])
    n = count_parameters(student)
    print(
        f"\nparameters: student {n:,} ({100 * n / SAM_VIT_B_ENCODER_PARAMS:.2f}% of SAM ViT-B's image encoder, "
        f"{SAM_VIT_B_ENCODER_PARAMS:,}); teacher {teacher.n_parameters:,}"
    )
    if args.skip_timing:
        return
    t_student = per_slice_seconds(student, slices, repeats=3)
    t_teacher = per_slice_seconds(teacher.encode, slices)
    print(
        f"time per 256x256 slice on this CPU (batch 1, {len(slices)} slices): student {t_student * 1000:.0f} ms, "
        f"teacher {t_teacher * 1000:.0f} ms ({t_teacher / t_student:.0f}x)"
    )
    timing = runs / "timing.json"
    if timing.exists():
        print(f"distillation time (s): {timing.read_text().strip()}")


if __name__ == "__main__":
    main()
