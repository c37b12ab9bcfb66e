"""The scripted surface of napari-rrl-medsam: plain functions and small dataclasses.

    from napari_rrl_medsam import api
    task = api.load_task("my_study/dataset.json")      # one labelled atlas, unlabelled volumes
    model = api.train_one_shot(task, out="run")         # registration, then co-training (the recipe)
    result = api.segment(model, "scan.nii.gz", atlas=task.atlas)
    api.save_volume(result.labels, "scan_labels.nii.gz")
    print(api.evaluate(result.labels, "scan_truth.nii.gz").table())

One function per training stage (`distill`, `train_registration`, `cotrain`; `train_one_shot` runs the last two;
`continue_training` fine-tunes both with more labelled volumes: `labelled=` a labelled set's folder), each
returning the trained model, or with `events=True` the `Progress` events the napari widgets drive (`drive` runs
them with progress bars and returns the last, e.g. `train_one_shot`'s comparison). The atlas is
passed the same way everywhere: `atlas=(image, labels)` (volumes or files) or a task `Case`. Settings are a
config object (`api.CotrainConfig(...)`) or a dict of its fields (`api.QUICK["cotrain"]`).

Importing this module does not import torch or napari (nor do the config classes).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..core.checkpoint import load_checkpoint
from ..core.configs import (
    FREESURFER_LEFT_RIGHT,
    REFINE_STEPS,
    CotrainConfig,
    DistillConfig,
    RegistrationTrainConfig,
    mirror_pairs,
)
from ..core.device import PRECISIONS
from ..core.errors import InputError
from ..core.files import check_output, check_output_folder
from ..core.io import is_volume_path, load_volume, plan_outputs, save_volume, volume_files
from ..core.metrics import Evaluation
from ..core.metrics import evaluate as _evaluate
from ..core.resample import normalise_intensity, reorient_canonical, resample, same_voxels, to_working, working_grid
from ..core.segmentation import PRIOR_WEIGHT
from ..core.task import Case, OneShotTask, add_labelled, labelled_set, load_task
from ..core.volume import Grid, Kind, Volume
from ..data.sample import sample_task
from .models import (
    SHIPPED_ENCODER,
    embedding_preview,
    load_encoder,
    load_model,
    propagate_atlases,
    register,
    register_atlases,
    run_propagated_atlases,
    segment,
    segment_batch,
)
from .prompts import prompt_segment, prompter
from .training import (
    CONTINUE,
    QUICK,
    continue_training,
    cotrain,
    defaults,
    distill,
    drive,
    train_one_shot,
    train_registration,
)

__all__ = [
    "CONTINUE",
    "Case",
    "Evaluation",
    "FREESURFER_LEFT_RIGHT",
    "Grid",
    "InputError",
    "Kind",
    "OneShotTask",
    "PRECISIONS",
    "PRIOR_WEIGHT",
    "QUICK",
    "REFINE_STEPS",
    "Volume",
    "add_labelled",
    "check_output",
    "check_output_folder",
    "CotrainConfig",
    "DistillConfig",
    "RegistrationTrainConfig",
    "SHIPPED_ENCODER",
    "continue_training",
    "cotrain",
    "defaults",
    "distill",
    "drive",
    "embedding_preview",
    "evaluate",
    "in_subprocess",
    "is_volume_path",
    "labelled_set",
    "load_checkpoint",
    "load_encoder",
    "load_model",
    "load_task",
    "load_volume",
    "mirror_pairs",
    "normalise_intensity",
    "plan_outputs",
    "prompt_segment",
    "propagate_atlases",
    "prompter",
    "register",
    "register_atlases",
    "run_propagated_atlases",
    "reorient_canonical",
    "resample",
    "same_voxels",
    "sample_task",
    "save_volume",
    "segment",
    "segment_batch",
    "set_cache_dir",
    "to_working",
    "train_one_shot",
    "train_registration",
    "volume_files",
    "working_grid",
]


def evaluate(
    prediction: Volume | np.ndarray | str | Path,
    truth: Volume | np.ndarray | str | Path,
    labels: Sequence[int] | None = None,
    hd95: bool = True,
) -> Evaluation:
    """Per-structure Dice and HD95 (mm) of a prediction against the truth, both on the truth's native grid.

    Args:
        prediction: a label map (volume, array or file).
        truth: the true label map (volume, array or file).
        labels: the structures to score; None: every structure in the truth.
        hd95: also the 95th percentile Hausdorff distance (slower).
    """
    if isinstance(prediction, (str, Path)):
        prediction = load_volume(prediction, kind="labels")
    if isinstance(truth, (str, Path)):
        truth = load_volume(truth, kind="labels")
    return _evaluate(prediction, truth, labels, hd95=hd95)


def set_cache_dir(path: str | Path) -> None:
    """Keep teacher embeddings (and a downloaded teacher) in `path` for the rest of this process, instead of the
    user cache folder.

    Args:
        path: a folder; created when first written to.
    """
    import os

    from ..core.files import CACHE_ENV

    os.environ[CACHE_ENV] = str(path)


def in_subprocess(job) -> Iterator:
    """The events of `job()` produced in the main thread of a child process: closing the iterator closes the engine
    there (which saves its checkpoint), and an error there is raised here. What the napari widgets train with
    (PyTorch runs 15-20% slower in a GUI's worker thread).

    Args:
        job: a picklable zero-argument callable returning an engine generator, e.g.
            `functools.partial(api.cotrain, task, registration=path, events=True)`.
    """
    from ..core.engines.remote import RemoteEvents

    return RemoteEvents(job)
