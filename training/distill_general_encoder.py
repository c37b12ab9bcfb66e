"""Recipe: the general encoder shipped with the package, distilled from the LiteMedSAM teacher.

Stage 1 on the BSDS500 training photographs, stage 2 on slices of the ten unlabelled training volumes
of the OASIS-like set (split `oneshot`; their label files are never read). Also trains the
"stage 2 only" ablation for the fidelity benchmark. Reproduce with:

    python training/distill_general_encoder.py --data ../shared/data --runs training/runs \
        --export src/napari_rrl_medsam/data/weights/general_encoder.pt --stage2-only

Writes runs/stage1.pt (after stage 1), runs/both.pt (both stages), runs/stage2_only.pt, runs/timing.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from napari_rrl_medsam.api import distill, load_task
from napari_rrl_medsam.core.engines.distill import export_encoder

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"))
    parser.add_argument("--config", default=str(HERE / "general_encoder.json"))
    parser.add_argument("--runs", default=str(HERE / "runs"))
    parser.add_argument("--export", help="write the float16 shippable encoder here")
    parser.add_argument("--stage2-only", action="store_true", help="also train the stage-2-only ablation")
    args = parser.parse_args()
    spec = json.loads(Path(args.config).read_text())
    data, runs = Path(args.data), Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    settings = dict(spec["settings"])
    natural = data / spec["natural"]
    volumes = [c.image for c in load_task(data / spec["task"], split=spec["split"], check=False).unlabelled]
    timing = {}

    def timed(name: str, **kw) -> None:
        start = time.perf_counter()
        distill(teacher=spec["teacher"], **kw)
        timing[name] = round(time.perf_counter() - start, 1)
        print(f"{name}: {timing[name]:.0f} s")

    stage1 = runs / "stage1.pt"
    timed("stage1", natural=natural, out=stage1, resume=True, **{**settings, "medical_steps": 0})
    both = runs / "both.pt"
    if not both.exists():
        shutil.copy(stage1, both)
    timed("stage2_after_stage1", volumes=volumes, natural=natural, out=both, resume=True, **settings)
    if args.stage2_only:
        timed(
            "stage2_only",
            volumes=volumes,
            natural=False,
            out=runs / "stage2_only.pt",
            resume=True,
            **{**settings, "natural_steps": 0},
        )
    (runs / "timing.json").write_text(json.dumps(timing, indent=1) + "\n")
    if args.export:
        print(f"exported {export_encoder(both, args.export)}")


if __name__ == "__main__":
    main()
