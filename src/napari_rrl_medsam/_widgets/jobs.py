"""The training jobs the widgets run, without Qt or napari: plain generator functions of picklable arguments,
so a widget can run them in its worker thread or in a child process (`core.engines.remote`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np


def registration_dice(checkpoint: Path, atlas, atlas_labels, image, truth, device: str) -> float:
    """Mean Dice of the warped atlas labels on the validation pair, from the registration checkpoint just
    saved (the registration engine reports no validation metric; the co-training engine does). The network
    alone, without refinement: this follows its training."""
    from ..api import evaluate, load_model, register, resample

    pred = register(load_model(checkpoint, device), (atlas, atlas_labels), image, refine_steps=0).warped_labels
    if not pred.grid.same_as(truth.grid):
        pred = resample(pred, truth.grid)
    return evaluate(pred, truth, hd95=False).mean_dice


def one_shot_training(atlas, atlas_labels, unlabelled: list, validation, encoder: Path | None, registration_out: Path,
                      model_out: Path, resume: bool, registration: dict, cotrain: dict) -> Iterator:
    """Registration network (skipped when its checkpoint is complete), then co-training: one event stream.
    `validation`: an (image, labels) pair or None; `registration` / `cotrain`: engine settings."""
    from ..api import cotrainer, load_encoder, registration_trainer
    from ..core.checkpoint import load_checkpoint

    registration_out.parent.mkdir(parents=True, exist_ok=True)
    general = load_encoder(encoder)
    done = registration_out.exists() and int(load_checkpoint(registration_out)["step"]) >= registration["steps"]
    if not done:
        events = registration_trainer(atlas=atlas, atlas_labels=atlas_labels, unlabelled=unlabelled, encoder=general,
                                      out=registration_out, resume=resume, **registration)
        try:
            for event in events:
                if validation is not None and event.checkpoint is not None and event.losses:
                    event.metrics = {**event.metrics, "val_dice_registration": registration_dice(
                        event.checkpoint, atlas, atlas_labels, *validation, registration.get("device", "auto"))}
                yield event
        finally:
            events.close()
    yield from cotrainer(atlas=atlas, atlas_labels=atlas_labels, unlabelled=unlabelled, registration=registration_out,
                         encoder=general, out=model_out, resume=resume,
                         validation=[validation] if validation is not None else [], **cotrain)


def embedding_preview(checkpoint: Path, volume) -> np.ndarray:
    """The student's embedding strength (channel norm) on the middle slice with anatomy of `volume`: a picture
    of what the encoder has learnt so far, taken from the checkpoint just written (the engine has no preview)."""
    import torch

    from ..api import load_encoder, load_volume
    from ..core.checkpoint import load_checkpoint
    from ..core.inputs import volume_slices

    config = load_checkpoint(checkpoint, "distill")["config"]
    volume = load_volume(volume) if isinstance(volume, (str, Path)) else volume
    x = volume_slices(volume, config["axis"], config["spacing"], config["image_size"], 1)
    with torch.no_grad():
        embedding = load_encoder(checkpoint)(x)[0]
    return embedding.norm(dim=0).numpy()


def distillation(volumes: list, natural: Path | None, teacher: str, teacher_checkpoint: Path | None, out: Path,
                 resume: bool, settings: dict, cache_dir: Path | None) -> Iterator:
    """DSKD with an embedding preview at each checkpoint. `cache_dir`: where teacher embeddings (and a
    downloaded teacher) go in this process; None: the user cache folder."""
    from ..api import distiller
    from ..core.cache import CACHE_ENV

    if cache_dir is not None:
        os.environ[CACHE_ENV] = str(cache_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    events = distiller(volumes, natural, teacher, teacher_checkpoint, out, resume, **settings)
    try:
        for event in events:
            if event.checkpoint is not None and volumes:
                event.preview = {"embedding": embedding_preview(event.checkpoint, volumes[0])}
            yield event
    finally:
        events.close()
