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
from typing import Sequence

import numpy as np

from .core.errors import InputError
from .core.io import load_volume, save_volume
from .core.metrics import Evaluation
from .core.metrics import evaluate as _evaluate
from .core.resample import normalise_intensity, resample, to_working, working_grid
from .core.task import Case, OneShotTask, load_task
from .core.volume import Grid, Volume
from .data.sample import sample_task

__all__ = ["Case", "Evaluation", "Grid", "InputError", "OneShotTask", "Volume", "evaluate", "load_task",
           "load_volume", "normalise_intensity", "resample", "sample_task", "save_volume", "to_working",
           "working_grid"]


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
