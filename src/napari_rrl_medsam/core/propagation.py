"""Propagated atlases: a co-trained model's segmentations of the unlabelled volumes, kept as pseudo-labelled atlases
for the registration prior.

One labelled volume registers onto a new scan with one set of mistakes. The model's own labels of the unlabelled
training volumes are atlases of other anatomies: registered onto the new scan as well and fused by the locally
weighted vote (`core/fusion.py`), they give a better prior than the atlas alone (label propagation through
intermediate images, as in LEAP: Wolz et al., NeuroImage 2010). A folder of them has the labelled set's layout
(`images/`, `labels/`; `task.add_labelled`), so every face that takes a labelled set for the prior takes it, plus
a marker file (`task.PROPAGATED`): these labels are predictions, and training refuses them as a labelled set
(`task.check_true_labels`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from .errors import InputError
from .task import PROPAGATED, labelled_set
from .volume import Volume, volume_id


def volume_names(volumes: Sequence[Volume]) -> list[str]:
    """Each volume's name in the folder: its file's name (`volume_id`), else `volume<i>`; duplicates refused."""
    names = [volume_id(v.path) if v.path is not None else f"volume{i}" for i, v in enumerate(volumes)]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"several volumes are named {', '.join(repeated)}: propagated atlases need distinct names.")
    return names


def _mark(folder: Path, classes: list[int], source: str) -> None:
    """Write the marker (atomically), or check an existing one's label table against the model's."""
    from .files import atomic_write

    marker = folder / PROPAGATED
    if marker.is_file():
        known = json.loads(marker.read_text()).get("classes")
        if known != classes:
            raise InputError(
                f"{folder} holds propagated atlases of a model with labels {known}, not {classes}: choose a new folder."
            )
        return
    if labelled_set(folder):
        raise InputError(
            f"{folder} is a labelled set of corrected volumes: propagated atlases go to a folder of their own."
        )
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"kind": "propagated atlases", "model": source, "classes": classes}, indent=1)
    atomic_write(marker, lambda tmp: Path(tmp).write_text(text))


def propagate(model, volumes: Sequence[Volume], folder, overwrite: bool = False) -> Iterator[tuple[str, bool]]:
    """Segment each volume with `model` and keep (image, labels) in `folder` as a propagated atlas. Volumes already
    there are left as they are (a stopped run resumes) unless `overwrite`. Yields (name, whether it was segmented
    now) per volume, after its files are written (atomically).

    Args:
        model: a co-trained `SegmentationModel`.
        volumes: the unlabelled volumes (those it was trained on; any scans of the same anatomy).
        folder: the output folder (created; marked as propagated atlases).
        overwrite: segment and replace volumes that are already there.
    """
    from .files import check_output
    from .io import save_volume

    folder = Path(folder)
    names = volume_names(volumes)
    paths = [(folder / "images" / f"{n}.nii.gz", folder / "labels" / f"{n}.nii.gz") for n in names]
    _mark(folder, [int(c) for c in model.classes], model.source)
    for sub in ("images", "labels"):
        (folder / sub).mkdir(exist_ok=True)
    for path in (path for pair in paths for path in pair):  # every output checked before the first is segmented
        check_output(path, overwrite=True)
    for volume, name, (image_path, labels_path) in zip(volumes, names, paths):
        if image_path.exists() and labels_path.exists() and not overwrite:
            yield name, False
            continue
        labels = model.segment(volume, auto_prompt=False).labels
        save_volume(volume, image_path, overwrite=True)
        save_volume(labels, labels_path, overwrite=True)
        yield name, True
