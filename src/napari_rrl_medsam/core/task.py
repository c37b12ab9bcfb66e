"""The one-shot task: one labelled atlas, unlabelled volumes to learn from, optional labelled evaluation volumes;
few-shot: further labelled training volumes (`labelled`, e.g. corrected segmentations; the atlas fixes the grid).

A task is built from explicit paths, from a folder (`images/` + `labels/`), or from a `dataset.json`
(`{"splits": {"oneshot": {"atlas": id, "train_unlabelled": [ids], "validation": [ids]}},
"eval_labels": [...]}` with files at `images/<id>.nii.gz` and `labels/<id>.nii.gz`).
A folder in the neurite-OASIS layout (`OASIS_OAS1_<n>_MR1/aligned_norm.nii.gz` + `aligned_seg35.nii.gz` per
subject) is read too: the atlas is the first subject (or `atlas=`), the last `n_validation` subjects are
the labelled evaluation volumes and the others are unlabelled (their label files are not attached).
Building a task checks every header (files exist, are 3D, labels sit on their image's grid);
`OneShotTask.check()` also reads the voxels (NaNs, truncated files, label values).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError
from .io import SUFFIXES, load_volume, read_grid, save_volume, volume_files
from .volume import Grid, Volume, volume_id

PathLike = str | Path
MAX_LABEL = 1_000_000  # label values index lookup tables: FreeSurfer's largest is 14175


def integer_labels(array: np.ndarray, where: str) -> np.ndarray:
    """A label map's values as integers, refusing what is not one: fractions (an image), non-finite or
    negative values, values too large to index.

    Args:
        array: the label map's voxels.
        where: what it is, for the messages (its file, "the prediction").
    """
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        if not np.issubdtype(array.dtype, np.floating) or not np.all(np.isfinite(array)):
            raise InputError(f"{where} has data type {array.dtype}; a label map needs integer values.")
        frac = array[array != np.round(array)]
        if frac.size:
            raise InputError(
                f"{where} has non-integer values (e.g. {float(frac.flat[0]):g}): it looks like an "
                "image, not a label map. Give the segmentation file (integer label per voxel)."
            )
    array = array.astype(np.int32) if not np.issubdtype(array.dtype, np.integer) else array
    if array.size and array.min() < 0:
        raise InputError(
            f"{where} has negative values ({int(array.min())}); labels must be 0 (background) or positive."
        )
    if array.size and array.max() > MAX_LABEL:
        raise InputError(
            f"{where} has the label value {int(array.max())}; values up to {MAX_LABEL} are supported. "
            "Renumber the structures (e.g. 1, 2, 3, ...)."
        )
    return array


def check_labels(labels: Volume) -> Volume:
    """A valid label map as an integer volume: integer values >= 0 and at least one labelled voxel."""
    where = f"{labels.path}" if labels.path else "the label map"
    array = integer_labels(labels.array, where)
    if not array.any():
        raise InputError(
            f"{where} is empty: every voxel is 0 (background). The atlas needs at least one labelled structure."
        )
    return labels.with_array(array, kind="labels")


def label_indices(labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Label values -> class indices (int64): `classes[i]` becomes i; values not in `classes` become 0.

    Args:
        labels: an integer label map.
        classes: the label values in class-index order (background, 0, first).
    """
    labels = np.asarray(labels).astype(np.int64)
    lut = np.zeros(max(int(labels.max(initial=0)), max(classes)) + 1, np.int64)
    lut[list(classes)] = np.arange(len(classes))
    return lut[labels]


def check_atlas(image: Volume, labels: Volume) -> Volume:
    """The atlas's label map, validated and checked to sit on the atlas image's grid."""
    check_pair(image.grid, labels.grid, "atlas image")
    return check_labels(labels)


def labelled_volumes(
    atlas: Volume, atlas_labels: Volume, labelled: Sequence[tuple[Volume, Volume]]
) -> list[tuple[Volume, Volume]]:
    """The atlas and the further labelled volumes as checked (image, labels) pairs with one label set.

    Args:
        atlas, atlas_labels: the atlas (it fixes the working grid).
        labelled: further labelled (image, labels) volumes.
    """
    from .fusion import check_label_sets

    pairs = [(image, check_atlas(image, labels)) for image, labels in [(atlas, atlas_labels), *labelled]]
    check_label_sets([np.unique(labels.array) for _, labels in pairs], [image.name for image, _ in pairs])
    return pairs


def check_pair(image: Grid, labels: Grid, what: str = "image") -> None:
    """Labels must sit exactly on their image's grid: same shape, same affine (to 1e-3 mm)."""
    if image.shape != labels.shape:
        raise InputError(
            f"the {what} has shape {image.shape} but its labels have shape {labels.shape}: "
            "a label map must be on its image's voxel grid. Check that the files belong together, "
            "or resample the labels onto the image (nearest neighbour)."
        )
    if not np.allclose(image.affine, labels.affine, atol=1e-3):
        raise InputError(
            f"the {what} and its labels have the same shape but different affines (voxel-to-world "
            f"matrices):\n{np.round(image.affine, 4)}\nvs\n{np.round(labels.affine, 4)}\n"
            "They do not line up in space. Check that the files belong together."
        )


@dataclass(frozen=True)
class Case:
    """One volume of a task: its image file and, for the atlas and evaluation volumes, its label file."""

    id: str
    image: Path
    labels: Path | None = None

    def load(self) -> tuple[Volume, Volume | None]:
        """Read and validate the image (and labels)."""
        image = load_volume(self.image, kind="image")
        if self.labels is None:
            return image, None
        labels = load_volume(self.labels, kind="labels")
        check_pair(image.grid, labels.grid, f"image of {self.id!r}")
        return image, check_labels(labels)


@dataclass
class OneShotTask:
    """An atlas (image + labels), unlabelled volumes, optional labelled evaluation volumes and optional further
    labelled training volumes (`labelled`: trained on like the atlas)."""

    atlas: Case
    unlabelled: list[Case]
    evaluation: list[Case] = field(default_factory=list)
    eval_labels: list[int] | None = None
    name: str = "task"
    label_names: dict[int, str] | None = None
    labelled: list[Case] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.atlas.labels is None:
            raise InputError("the atlas needs a label map: give atlas_labels (the one labelled example).")
        if not self.unlabelled:
            raise InputError("the task has no unlabelled volumes; give at least one volume to segment.")
        unlabelled = [c.id for c in self.labelled if c.labels is None]
        if unlabelled:
            raise InputError(f"labelled training volumes need labels; none for {unlabelled}.")
        for case in self.cases():
            grid = read_grid(case.image)
            if case.labels is not None:
                check_pair(grid, read_grid(case.labels), f"image of {case.id!r}")
        missing = [c.id for c in self.evaluation if c.labels is None]
        if missing:
            raise InputError(f"evaluation volumes need labels; none for {missing}.")
        images = [c.image.resolve() for c in self.cases()]
        twice = sorted({str(p) for p in images if images.count(p) > 1})
        if twice:
            raise InputError(
                f"{twice[0]} is listed more than once in the task (atlas, unlabelled and evaluation "
                "volumes must all differ): the atlas would be its own target, or a volume would count "
                "twice. List each volume once."
            )
        ids = [c.id for c in self.cases()]
        same = sorted({i for i in ids if ids.count(i) > 1})
        if same:
            raise InputError(
                f"two volumes of the task have the id {same[0]!r}: outputs are named by id, so each "
                "needs its own file name."
            )

    def cases(self) -> list[Case]:
        return [self.atlas, *self.labelled, *self.unlabelled, *self.evaluation]

    def check(self) -> OneShotTask:
        """Read every file once and validate its voxels (slow for big sets; building the task checks headers)."""
        for case in self.cases():
            _, labels = case.load()
            if case is self.atlas:
                self.check_eval_labels(labels)
        return self

    def check_eval_labels(self, atlas_labels: Volume) -> None:
        """Refuse evaluation labels the atlas does not have: the model can never predict them.

        Args:
            atlas_labels: the atlas's label map.
        """
        absent = sorted(set(self.eval_labels or []) - {int(v) for v in np.unique(atlas_labels.array)})
        if absent:
            raise InputError(
                f"eval_labels {absent} are not in the atlas labels ({self.atlas.labels}); a one-shot "
                "model only knows the atlas's structures. Remove them from eval_labels."
            )

    def summary(self) -> str:
        more = f" + {len(self.labelled)} labelled" if self.labelled else ""
        return (
            f"task {self.name!r}: atlas {self.atlas.id}{more}, {len(self.unlabelled)} unlabelled, "
            f"{len(self.evaluation)} evaluation volume(s)"
        )

    def with_labelled(self, labelled: Iterable[str | Case]) -> OneShotTask:
        """This task with further labelled training volumes (e.g. corrected results): each a `Case` with labels, or
        the id of one of its unlabelled or evaluation volumes, which then moves to `labelled` with its label file
        (its own; else the file of its image's name beside the atlas's labels, or of the atlas labels' name beside
        its image, as in the neurite-OASIS layout).

        Args:
            labelled: ids or `Case`s; a `Case` with an unlabelled volume's id replaces that volume.
        """
        from dataclasses import replace

        added = [c if isinstance(c, Case) else self._labelled_case(str(c)) for c in labelled]
        ids = {c.id for c in added}
        return replace(
            self,
            labelled=[*self.labelled, *added],
            unlabelled=[c for c in self.unlabelled if c.id not in ids],
            evaluation=[c for c in self.evaluation if c.id not in ids],
        )

    def _labelled_case(self, id: str) -> Case:
        """An unlabelled or evaluation volume of this task, by id, with its label file."""
        case = next((c for c in [*self.unlabelled, *self.evaluation] if c.id == id), None)
        if case is None:
            known = [c.id for c in [*self.unlabelled, *self.evaluation]]
            raise InputError(f"the task has no unlabelled or evaluation volume {id!r} (it has {known[:8]}).")
        if case.labels is not None:
            return case
        if self.atlas.image.parent == self.atlas.labels.parent:  # a folder per subject (neurite-OASIS)
            guess = case.image.with_name(self.atlas.labels.name)
        else:  # a labels/ folder beside images/
            guess = self.atlas.labels.parent / case.image.name
        if case.image.parent == self.atlas.image.parent == guess.parent or not guess.is_file():
            raise InputError(f"no label file for {id!r}: looked for {guess}.")
        return Case(case.id, case.image, guess)


def _case(image: PathLike, labels: PathLike | None = None) -> Case:
    return Case(volume_id(image), Path(image), Path(labels) if labels is not None else None)


def _volume_files(folder: Path) -> dict[str, Path]:
    return {volume_id(p): p for p in volume_files(folder)}


def _from_dataset_json(path: Path, split: str) -> OneShotTask:
    try:
        spec = json.loads(path.read_text())
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path} is not a dataset.json (it is not text; a volume?): give a task's dataset.json or "
            "its folder here, and volumes where volumes are asked for."
        ) from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    if not isinstance(spec, dict):
        raise InputError(
            f"{path} holds a JSON {type(spec).__name__}, not an object with 'splits' (see the README's task layout)."
        )
    splits = spec.get("splits", {})
    if not isinstance(splits, dict):
        raise InputError(f"'splits' in {path} must be an object of named splits, not {type(splits).__name__}.")
    if split not in splits:
        raise InputError(
            f"{path} has no split {split!r} under 'splits' (it has {sorted(splits)}); choose one with split=..."
        )
    s, root = splits[split], path.parent
    for key in ("atlas", "train_unlabelled"):
        if key not in s:
            raise InputError(f"split {split!r} of {path} lacks {key!r}.")
    if not isinstance(s["atlas"], str) or not all(
        isinstance(i, str) for i in [*s["train_unlabelled"], *s.get("validation", [])]
    ):
        raise InputError(
            f"split {split!r} of {path}: 'atlas' must be a volume id (a string) and "
            "'train_unlabelled' / 'validation' lists of ids."
        )
    images, labels = root / spec.get("images", "images"), root / spec.get("labels", "labels")
    suffix = spec.get("suffix", ".nii.gz")

    def case(i: str, labelled: bool) -> Case:
        return Case(i, images / f"{i}{suffix}", labels / f"{i}{suffix}" if labelled else None)

    try:
        names = {int(k): str(v) for k, v in spec.get("label_names", {}).items()}
        eval_labels = [int(v) for v in spec["eval_labels"]] if spec.get("eval_labels") is not None else None
    except (AttributeError, TypeError, ValueError) as exc:
        raise InputError(
            f'{path}: \'label_names\' must map label values to names ({{"1": "cortex"}}) and '
            f"'eval_labels' be a list of label values ({exc})."
        ) from exc
    # Unlabelled volumes get no label path at all: their label files (if any) must never feed training.
    return OneShotTask(
        case(s["atlas"], True),
        [case(i, False) for i in s["train_unlabelled"]],
        [case(i, True) for i in s.get("validation", [])],
        eval_labels,
        spec.get("name", path.parent.name),
        names or None,
    )


NEURITE_OASIS = ("OASIS_OAS1_*_MR1", "aligned_norm.nii.gz", "aligned_seg35.nii.gz")


def _from_neurite_oasis(folder: Path, atlas: str | None, n_validation: int) -> OneShotTask:
    pattern, image, labels = NEURITE_OASIS
    subjects = {d.name: d for d in sorted(folder.glob(pattern)) if (d / image).is_file()}
    incomplete = [n for n, d in subjects.items() if not (d / labels).is_file()]
    if incomplete:
        raise InputError(
            f"{folder}: {len(incomplete)} neurite-OASIS subject(s) lack {labels} "
            f"(e.g. {incomplete[0]}); every subject of this layout needs it."
        )
    names = list(subjects)
    atlas = atlas or names[0]
    if atlas not in subjects:
        raise InputError(f"{folder}: no subject {atlas!r} (subjects look like {names[0]}).")
    rest = [n for n in names if n != atlas]
    if not 0 <= n_validation < len(rest):
        raise InputError(
            f"{folder}: {len(rest)} subjects besides the atlas cannot give {n_validation} validation "
            "volumes and leave at least one unlabelled; lower n_validation."
        )
    cut = len(rest) - n_validation
    return OneShotTask(
        Case(atlas, subjects[atlas] / image, subjects[atlas] / labels),
        [Case(n, subjects[n] / image) for n in rest[:cut]],
        [Case(n, subjects[n] / image, subjects[n] / labels) for n in rest[cut:]],
        name=folder.name,
    )


def _from_folder(folder: Path, atlas: str | None, n_validation: int) -> OneShotTask:
    if not (folder / "images").is_dir() and any(folder.glob(NEURITE_OASIS[0])):
        return _from_neurite_oasis(folder, atlas, n_validation)
    if not (folder / "images").is_dir():
        raise InputError(
            f"{folder} has neither a dataset.json nor an images/ folder. Lay a task out as "
            f"{folder}/images/<id>.nii.gz (+ {folder}/labels/<id>.nii.gz for labelled volumes), "
            "or give the files explicitly."
        )
    images = _volume_files(folder / "images")
    labels = _volume_files(folder / "labels") if (folder / "labels").is_dir() else {}
    if not images:
        raise InputError(f"{folder / 'images'} holds no volume files ({', '.join(SUFFIXES)}).")
    labelled = [i for i in images if i in labels]
    if atlas is None:
        if not labelled:
            found = ", ".join(p.name for p in list(labels.values())[:3]) or "nothing"
            raise InputError(
                f"{folder}: no image has labels. A label file has its image's name in "
                f"{folder / 'labels'} (e.g. labels/{next(iter(images.values())).name} for "
                f"images/{next(iter(images.values())).name}); found {found} there."
            )
        if len(labelled) > 1:
            raise InputError(
                f"{folder}: {len(labelled)} images have labels ({labelled[:5]}); name the atlas "
                "with atlas=ID (CLI: --atlas ID); the other labelled images are used for evaluation."
            )
        atlas = labelled[0]
    if atlas not in labels:
        raise InputError(f"{folder}: no labels for atlas {atlas!r} in {folder / 'labels'}.")
    return OneShotTask(
        Case(atlas, images[atlas], labels[atlas]),
        [Case(i, p) for i, p in images.items() if i not in labels],
        [Case(i, images[i], labels[i]) for i in labelled if i != atlas],
        name=folder.name,
    )


PROPAGATED = "propagated.json"  # the marker of a folder of propagated atlases (`core/propagation.py`)


def is_propagated(folder) -> bool:
    """Whether `folder` holds propagated atlases (its marker file), not a labelled set of true labels."""
    return isinstance(folder, (str, Path)) and (Path(folder) / PROPAGATED).is_file()


def check_true_labels(labelled) -> None:
    """Refuse a folder of propagated atlases where labels must be true (training, continuing a run).

    Args:
        labelled: what a training function was given as its labelled volumes.
    """
    if is_propagated(labelled):
        raise InputError(
            f"{labelled} holds propagated atlases (the model's own predictions, {PROPAGATED}), not corrected labels: "
            "use it for the registration prior (segment with labelled=...), and train with a labelled set of "
            "corrected volumes."
        )


def add_labelled(folder: PathLike, image: Volume, labels: Volume, name: str) -> tuple[Path, Path]:
    """Add a labelled volume (e.g. a corrected segmentation) to a labelled set: `folder/images/<name>.nii.gz` and
    `folder/labels/<name>.nii.gz`, the layout `load_task` reads. Both files are checked before either is written,
    each is written atomically, and nothing is ever replaced.

    Args:
        folder: the labelled set's folder (created if need be).
        image: the image, on its own grid.
        labels: its label map, on the same grid.
        name: the volume's name: letters, digits, "-", "_" and "." only.
    """
    from .files import check_output

    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise InputError(f"{name!r} cannot name a volume file: use letters, digits, '-', '_' and '.' only.")
    labels = check_atlas(image, labels)
    folder = Path(folder)
    if is_propagated(folder):
        raise InputError(
            f"{folder} holds propagated atlases (a model's predictions): add corrected volumes to a labelled set of "
            "their own (another folder)."
        )
    paths = folder / "images" / f"{name}.nii.gz", folder / "labels" / f"{name}.nii.gz"
    for path in paths:
        if path.exists():
            raise InputError(f"{path} exists: the labelled set has a volume {name!r}; choose another name.")
        path.parent.mkdir(parents=True, exist_ok=True)
        check_output(path)
    save_volume(image, paths[0])
    save_volume(labels, paths[1])
    return paths


def labelled_set(folder: PathLike) -> list[Case]:
    """The labelled volumes of a folder laid out as `add_labelled` writes it (images/, labels/; same names), by
    name; images without labels are left out.

    Args:
        folder: the labelled set's folder (missing: an empty set).
    """
    folder = Path(folder)
    if not (folder / "images").is_dir() or not (folder / "labels").is_dir():
        return []
    images, labels = _volume_files(folder / "images"), _volume_files(folder / "labels")
    return [Case(i, images[i], labels[i]) for i in sorted(images) if i in labels]


def load_task(
    source: PathLike | None = None,
    *,
    atlas_image: PathLike | None = None,
    atlas_labels: PathLike | None = None,
    unlabelled: Iterable[PathLike] = (),
    evaluation: Iterable[tuple[PathLike, PathLike]] = (),
    atlas: str | None = None,
    split: str = "oneshot",
    eval_labels: Sequence[int] | None = None,
    check: bool = True,
    n_validation: int = 5,
    labelled: Iterable[str | Case] = (),
) -> OneShotTask:
    """Build a one-shot task from a `dataset.json`, a task folder, a neurite-OASIS folder, or explicit paths.

    Args:
        source: a dataset.json, a task folder (images/, labels/) or a neurite-OASIS folder; None: explicit paths.
        atlas_image, atlas_labels, unlabelled, evaluation: explicit paths (without `source`).
        atlas: the atlas's id in a folder or OASIS set (default: the only labelled image / the first subject).
        split: the dataset.json split to use.
        eval_labels: the structures to score (default: the dataset's, else every label of the atlas).
        check: read every volume once to validate it (False: headers only).
        n_validation: how many neurite-OASIS subjects (the last ones) are held out as labelled evaluation volumes.
        labelled: further labelled training volumes (`OneShotTask.with_labelled`): ids of the task's volumes or
            `Case`s.
    """
    if source is not None:
        if atlas_image is not None or atlas_labels is not None:
            raise InputError("give either a dataset.json / folder or explicit atlas paths, not both.")
        source = Path(source)
        if not source.exists():
            raise FileNotFoundError(f"{source}: no such file or folder.")
        if source.is_dir() and (source / "dataset.json").exists():
            source = source / "dataset.json"
        task = _from_dataset_json(source, split) if source.is_file() else _from_folder(source, atlas, n_validation)
    else:
        if atlas_image is None or atlas_labels is None:
            raise InputError("a one-shot task needs atlas_image and atlas_labels (or a dataset.json / folder).")
        task = OneShotTask(
            _case(atlas_image, atlas_labels), [_case(p) for p in unlabelled], [_case(i, lab) for i, lab in evaluation]
        )
    if eval_labels is not None:
        task.eval_labels = [int(v) for v in eval_labels]
    task = task.with_labelled(labelled) if labelled else task
    return task.check() if check else task
