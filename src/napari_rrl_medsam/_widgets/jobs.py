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
    out: Path,
    resume: bool,
    registration: dict,
    cotrain: dict,
    labelled: Path | None = None,
    run: Path | None = None,
    propagate: bool = False,
) -> Iterator:
    """`api.train_one_shot`'s events: registration (skipped when its checkpoint in `out` is complete), co-training,
    then with `validation` the registration's and the model's Dice on it (stage "evaluation"); with `run`,
    `api.continue_training`'s: that finished run fine-tuned with the `labelled` set, into `out`.
    `validation`: an (image, labels) pair or None; `registration` / `cotrain`: config dicts; `labelled`: a labelled
    set's folder or None; `propagate`: a one-shot run's propagated atlases into `out/propagated`."""
    from ..api import continue_training, train_one_shot

    common = dict(
        atlas=(atlas, atlas_labels),
        unlabelled=unlabelled,
        labelled=labelled or (),
        encoder=encoder,
        out=out,
        resume=resume,
        validation=[validation] if validation is not None else [],
        registration=registration,
        cotrain=cotrain,
        events=True,
    )
    yield from train_one_shot(**common, propagate=propagate) if run is None else continue_training(run, **common)


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
    from ..api import distill, embedding_preview, set_cache_dir

    if cache_dir is not None:
        set_cache_dir(cache_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    events = distill(
        volumes,
        natural=natural,
        teacher=teacher,
        teacher_checkpoint=teacher_checkpoint,
        out=out,
        resume=resume,
        config=settings,
        events=True,
    )
    try:
        for event in events:
            if event.checkpoint is not None and volumes:
                event.preview = {"embedding": embedding_preview(event.checkpoint, volumes[0])}
            yield event
    finally:
        events.close()
