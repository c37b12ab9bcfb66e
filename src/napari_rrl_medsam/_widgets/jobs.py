"""The training jobs the widgets run, without Qt or napari: plain generator functions of picklable arguments,
so a widget can run them in its worker thread or in a child process (`api.in_subprocess`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


def one_shot_training(
    atlas,
    atlas_labels,
    unlabelled: list,
    validation,
    encoder: Path | None,
    registration_out: Path,
    model_out: Path,
    resume: bool,
    registration: dict,
    cotrain: dict,
) -> Iterator:
    """Registration network (skipped when its checkpoint is complete), then co-training: one event stream.
    `validation`: an (image, labels) pair or None; `registration` / `cotrain`: engine settings."""
    from ..api import cotrainer, load_checkpoint, load_encoder, registration_trainer

    registration_out.parent.mkdir(parents=True, exist_ok=True)
    general = load_encoder(encoder)
    done = registration_out.exists() and int(load_checkpoint(registration_out)["step"]) >= registration["steps"]
    if not done:
        yield from registration_trainer(
            atlas=atlas,
            atlas_labels=atlas_labels,
            unlabelled=unlabelled,
            encoder=general,
            out=registration_out,
            resume=resume,
            validation=[validation] if validation is not None else [],
            **registration,
        )
    yield from cotrainer(
        atlas=atlas,
        atlas_labels=atlas_labels,
        unlabelled=unlabelled,
        registration=registration_out,
        encoder=general,
        out=model_out,
        resume=resume,
        validation=[validation] if validation is not None else [],
        **cotrain,
    )


def distillation(
    volumes: list,
    natural: Path | None,
    teacher: str,
    teacher_checkpoint: Path | None,
    out: Path,
    resume: bool,
    settings: dict,
    cache_dir: Path | None,
) -> Iterator:
    """DSKD with an embedding preview at each checkpoint. `cache_dir`: where teacher embeddings (and a
    downloaded teacher) go in this process; None: the user cache folder."""
    from ..api import distiller, embedding_preview, set_cache_dir

    if cache_dir is not None:
        set_cache_dir(cache_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    events = distiller(volumes, natural, teacher, teacher_checkpoint, out, resume, **settings)
    try:
        for event in events:
            if event.checkpoint is not None and volumes:
                event.preview = {"embedding": embedding_preview(event.checkpoint, volumes[0])}
            yield event
    finally:
        events.close()
