"""How the api takes its inputs: volumes or their files, the atlas as an (image, labels) pair or a task `Case`,
a task or its path, validation pairs. Every function of the api reads them through these."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..core.errors import InputError
from ..core.io import load_volume
from ..core.task import Case, OneShotTask, check_labels, check_true_labels, labelled_set, load_task
from ..core.volume import Volume


def as_volume(v: Volume | str | Path, kind: str = "image") -> Volume:
    """A `Volume` as given, or read from its file.

    Args:
        v: a volume or a path.
        kind: "image" or "labels" (for a path).
    """
    return v if isinstance(v, Volume) else load_volume(v, kind=kind)


def atlas_pair(atlas, labels_required: bool = True) -> tuple[Volume, Volume | None]:
    """The atlas (image, labels) from a pair of volumes or paths or a task `Case`.

    Args:
        atlas: (image, labels) or a `Case`.
        labels_required: refuse an atlas without labels (training); registration alone can warp an image only.
    """
    if isinstance(atlas, Case):
        image, labels = atlas.load()
    elif isinstance(atlas, (tuple, list)) and len(atlas) == 2:
        image, labels = as_volume(atlas[0]), None if atlas[1] is None else as_volume(atlas[1], "labels")
    else:
        raise InputError(
            "atlas is an (image, labels) pair of volumes or files, or a task Case (task.atlas), not "
            f"{type(atlas).__name__}."
        )
    if labels is None and labels_required:
        raise InputError("the atlas needs its labels: give atlas=(image, labels).")
    return image, None if labels is None else check_labels(labels)


def as_task(task: OneShotTask | str | Path | None) -> OneShotTask | None:
    """A task as given, or read (once) from its dataset.json or folder."""
    return load_task(task, check=False) if isinstance(task, (str, Path)) else task


def training_volumes(
    task: OneShotTask | None, atlas, unlabelled: Sequence, labelled: Sequence | str | Path = ()
) -> tuple[Volume, Volume, list[Volume], list[tuple[Volume, Volume]]]:
    """(atlas image, atlas labels, unlabelled volumes, further labelled (image, labels) volumes) from a task, or
    from `atlas` and `unlabelled`; plus `labelled`. An unlabelled volume read from the same file name as a labelled
    one (a corrected result added to a labelled set) is left out of the unlabelled ones: it has labels now.

    Args:
        task: a `OneShotTask` (its `labelled` volumes included) or None.
        atlas: without a task, (image, labels) or a `Case`.
        unlabelled: without a task, volumes or files.
        labelled: further labelled volumes: (image, labels) pairs or `Case`s, or a labelled set's folder
            (`add_labelled`).
    """
    check_true_labels(labelled)
    more = labelled_pairs(labelled)
    if task is not None:
        if atlas is not None or unlabelled:
            raise InputError("give either a task or atlas and unlabelled volumes, not both.")
        image, labels = task.atlas.load()
        targets = [case.load()[0] for case in task.unlabelled]
        more = [*(case.load() for case in task.labelled), *more]
    elif atlas is None:
        raise InputError("give a task (dataset.json, folder or OneShotTask), or atlas=(image, labels) and unlabelled.")
    else:
        (image, labels), targets = atlas_pair(atlas), [as_volume(v) for v in unlabelled]
    names = {v.name for v, _ in more if v.path is not None}
    targets = [t for t in targets if t.path is None or t.name not in names]
    return image, labels, targets, [(v, check_labels(lab)) for v, lab in more]


def labelled_pairs(labelled: Sequence | str | Path) -> list[tuple[Volume, Volume]]:
    """Labelled (image, labels) volumes from pairs of volumes or files, `Case`s, or a labelled set's folder.

    Args:
        labelled: the pairs or cases, or the folder (`add_labelled`'s layout).
    """
    if isinstance(labelled, (str, Path)):
        cases = labelled_set(labelled)
        if not cases:
            raise InputError(
                f"{labelled} holds no labelled volumes (images/<name>.nii.gz with labels/<name>.nii.gz): add some "
                "with 'Add to labelled set' (api.add_labelled), or choose the labelled set's folder."
            )
        labelled = cases
    return [atlas_pair(item) for item in labelled]


def validation_pairs(task: OneShotTask | None, validation: Sequence | bool) -> list[tuple[Volume, Volume]]:
    """Labelled (image, labels) volumes from pairs of volumes or paths; True: the task's evaluation volumes (none
    without a task); False or (): none."""
    if validation is True:
        validation = [case.load() for case in task.evaluation] if task is not None else []
    return [(as_volume(i), as_volume(lab, "labels")) for i, lab in (validation or [])]
