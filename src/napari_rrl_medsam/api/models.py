"""Trained models: loading them, registering and segmenting with them (on each volume's native grid)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..core.errors import InputError
from ..core.registration import REFINE_STEPS
from ..core.segmentation import PRIOR_WEIGHT
from ..core.task import is_propagated
from ..core.volume import Volume
from .volumes import as_volume, atlas_pair, labelled_pairs

SHIPPED_ENCODER = Path(__file__).parent.parent / "data" / "weights" / "general_encoder.pt"


def load_encoder(path: str | Path | None = None):
    """A distilled general encoder (torch module, eval mode); `encoder.teacher` names the teacher it was distilled
    from, `encoder.source` its file.

    Args:
        path: a distillation checkpoint (`distill`'s `out`); None: the encoder shipped with the package.
    """
    from ..core.engines.distill import load_encoder as _load

    if path is None:
        if not SHIPPED_ENCODER.exists():
            raise InputError("this installation has no shipped general encoder; distil one with api.distill(...)")
        path = SHIPPED_ENCODER
    encoder = _load(path)
    encoder.source = str(Path(path).resolve())
    return encoder


def embedding_preview(checkpoint: str | Path, volume: Volume | str | Path) -> np.ndarray:
    """What a distilled encoder sees: its embedding strength (channel norm) on the middle slice with anatomy.

    Args:
        checkpoint: a distillation checkpoint (`distill`'s `out`, finished or not).
        volume: an image volume or its file.
    """
    from ..core.engines.distill import embedding_preview as _preview

    return _preview(checkpoint, as_volume(volume))


def load_model(path: str | Path, device: str = "auto", precision: str = "auto"):
    """A trained model from its checkpoint: a `RegistrationModel` (registration stage) or a
    `SegmentationModel` (co-trained RRL-MedSAM, which also registers).

    Args:
        path: a registration or co-training checkpoint (read once).
        device: "auto", "cpu", "cuda", ...
        precision: a co-trained model's arithmetic when it segments: "auto" (bfloat16 autocast where the GPU or CPU
            computes it natively, else float32), "float32", "bfloat16" or "float16" (CUDA); also settable later as
            `model.precision`.
    """
    from ..core.checkpoint import model_from_checkpoint
    from ..core.registration import KIND as REGISTRATION
    from ..core.registration import RegistrationModel
    from ..core.segmentation import KIND as SEGMENTATION
    from ..core.segmentation import SegmentationModel

    def build(state: dict):
        models = {REGISTRATION: RegistrationModel, SEGMENTATION: SegmentationModel}
        if state["kind"] not in models:
            raise InputError(
                f"{path} is a {state['kind']!r} checkpoint, not a model: distillation checkpoints are encoders "
                "(api.load_encoder)."
            )
        if state["kind"] == SEGMENTATION:
            return SegmentationModel.from_state(state, device, precision)
        return models[state["kind"]].from_state(state, device)

    return model_from_checkpoint(path, None, build)


def register(model, atlas, volume: Volume | str | Path, refine_steps: int = REFINE_STEPS):
    """Register the atlas onto `volume`: the displacement field, the warped atlas image and the warped atlas labels
    (pseudo labels), all on `volume`'s native grid with its affine (a `RegistrationResult`).

    Args:
        model: from `load_model` (a registration or co-trained model) or a checkpoint file.
        atlas: (image, labels) volumes or files (labels may be None: the image alone), or a task `Case`.
        volume: the target image (volume or file).
        refine_steps: instance optimisation steps on this pair (`REFINE_STEPS` = 5 costs about 2 s on a brain;
            0: the network alone).
    """
    if isinstance(model, (str, Path)):
        model = load_model(model)
    image, labels = atlas_pair(atlas, labels_required=False)
    return model.register(image, labels, as_volume(volume), refine_steps)


def register_atlases(
    model, atlases: Sequence, volume: Volume | str | Path, fusion: str = "local", refine_steps: int = REFINE_STEPS
):
    """Register several labelled volumes onto `volume` and fuse their warped labels: multi-atlas segmentation.

    Args:
        model: from `load_model` (a registration or co-trained model) or a checkpoint file.
        atlases: (image, labels) pairs of volumes or files, or task `Case`s; their label sets must agree.
        volume: the target image (volume or file).
        fusion: "local" (each atlas's vote weighted by its warped image's local similarity to the target) or
            "majority".
        refine_steps: instance optimisation steps per pair.

    Returns:
        A `MultiAtlasResult`: `.labels` (fused, on `volume`'s native grid and affine) and `.results` (each atlas's
        `RegistrationResult`).
    """
    if isinstance(model, (str, Path)):
        model = load_model(model)
    pairs = [atlas_pair(atlas) for atlas in atlases]
    return model.register_atlases(pairs, as_volume(volume), fusion, refine_steps)


def segment(
    model,
    volume: Volume | str | Path,
    prior: Volume | str | Path | None = None,
    prior_weight: float = PRIOR_WEIGHT,
    mirror: Sequence[tuple[int, int]] | None = None,
    atlas=None,
    refine_steps: int = REFINE_STEPS,
    auto_prompt: bool = True,
    labelled: Sequence | str | Path = (),
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
        labelled: with `atlas`, further labelled volumes ((image, labels) pairs, `Case`s, a labelled set's
            folder or `propagate_atlases`' folder): all are registered onto `volume` and their warped labels fused
            (`register_atlases`, local vote) into the prior; `.registration` then holds the `register_atlases`
            result.
        auto_prompt: also the auto-prompt mask on the native grid (False: `.auto_prompt` is None; faster).
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
    if labelled and atlas is None:
        raise InputError("labelled volumes fuse into the registration prior with the atlas: give atlas= too.")
    volume = as_volume(volume)
    if atlas is not None and labelled:
        with warnings.catch_warnings():
            if is_propagated(labelled):  # a model's predictions lack what it never predicts (a tiny structure)
                warnings.filterwarnings("ignore", message=".* lacks labels")
            pairs = [atlas, *labelled_pairs(labelled)]
            registered = register_atlases(model, pairs, volume, refine_steps=refine_steps)
        prior = registered.labels
    elif atlas is not None:
        registered = register(model, atlas, volume, refine_steps)
        prior = registered.warped_labels
    else:
        registered = None
    result = model.segment(
        volume, None if prior is None else as_volume(prior, "labels"), prior_weight, mirror, auto_prompt
    )
    result.registration = registered
    return result


def propagate_atlases(model, volumes, out: str | Path, overwrite: bool = False) -> Iterator[tuple[str, bool]]:
    """Propagated atlases: segment the unlabelled volumes with a co-trained model and keep each (image, labels) in
    `out`, the labelled set's layout marked as predictions. `segment(model, scan, atlas=..., labelled=out)` then
    registers the atlas AND these onto the scan and fuses them by local vote into its prior: a better prior
    than the atlas alone (docs/benchmarks.md), at one registration per volume in `out`. Training refuses the
    folder as labelled volumes: its labels are the model's own. Yields (name, segmented now) per volume; a
    stopped run resumes (volumes already in `out` are kept unless `overwrite`).

    Args:
        model: a co-trained model (`load_model`) or its file.
        volumes: the unlabelled volumes (volumes, files or folders of them) or a task (its unlabelled volumes);
            those the model was trained on are the natural choice.
        out: the folder.
        overwrite: segment again the volumes already in `out`.
    """
    from ..core.propagation import propagate
    from ..core.task import OneShotTask

    if isinstance(model, (str, Path)):
        model = load_model(model)
    if not hasattr(model, "segment"):
        raise InputError("propagated atlases are a co-trained model's segmentations: give one (api.cotrain).")
    if isinstance(volumes, OneShotTask):
        volumes = [case.image for case in volumes.unlabelled]
    paths = [p for item in volumes for p in _volume_items(item)]
    if not paths:
        raise InputError("no volumes to propagate to: give the unlabelled volumes (files, folders or a task).")
    yield from propagate(model, [as_volume(p) for p in paths], out, overwrite)


def run_propagated_atlases(model_file: str | Path) -> Path | None:
    """The propagated atlases a training run made beside its model (`train_one_shot(propagate=True)`, the co-training
    widget, `rrl-medsam train`: `<run>/propagated`), or None.

    Args:
        model_file: the run's rrl_medsam.pt (any file in the run's folder).
    """
    folder = Path(model_file).parent / "propagated"
    return folder if is_propagated(folder) else None


def _volume_items(item) -> list:
    """A folder's volume files, or the item itself (a volume or a file)."""
    from ..core.io import volume_files

    return volume_files(item) if isinstance(item, (str, Path)) and Path(item).is_dir() else [item]


def segment_batch(
    model,
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    auto_prompt: bool = False,
    skip_existing: bool = False,
    overwrite: bool = False,
    shard: bool = True,
    device: str = "auto",
    precision: str = "auto",
    **options,
) -> Iterator[tuple[Path, list[Path] | None, float]]:
    """Segment many volumes into `out`: `<id>_labels.nii.gz` (and `<id>_auto_prompt.nii.gz`) on each input's own grid,
    written atomically; every output is checked before the first volume is segmented, and the next volume is read
    in the background while this one is segmented. Yields (input, the files written or None when skipped, seconds).

    Args:
        model: a co-trained model (`load_model`) or its file (loaded once every output has been checked).
        inputs: volume files or folders of them.
        out: the output folder.
        auto_prompt: also write the auto-prompt mask.
        skip_existing: leave out volumes whose outputs are all there (a stopped batch resumes).
        overwrite: replace existing outputs.
        shard: under torchrun, segment only this rank's share (every WORLD_SIZE-th volume from RANK).
        device: where a model file is loaded ("auto": under torchrun, the GPU of this process's LOCAL_RANK).
        precision: a model file's arithmetic (`load_model`); a loaded model keeps its own.
        options: `segment`'s (prior_weight, mirror, atlas, labelled, refine_steps).
    """
    import time

    from ..core.batch import process_share, read_ahead
    from ..core.device import process_device
    from ..core.io import load_volume, plan_outputs, save_volume
    from ..core.volume import volume_id

    paths = [Path(p) for item in inputs for p in _volume_items(item)]
    if not paths:
        raise InputError(f"no volume files (.nii.gz, .nii, .tif, .tiff) in {', '.join(map(str, inputs))}.")
    endings = ("_labels.nii.gz", "_auto_prompt.nii.gz") if auto_prompt else ("_labels.nii.gz",)
    done = {p for p in paths if skip_existing and all((Path(out) / f"{volume_id(p)}{e}").exists() for e in endings)}
    plan_outputs([p for p in paths if p not in done], out, endings, overwrite=True)  # no two inputs write one file
    mine = process_share(paths) if shard else paths
    todo = [p for p in mine if p not in done]
    plan = dict(zip(todo, plan_outputs(todo, out, endings, overwrite)))  # this process's outputs, checked
    for path in [p for p in mine if p in done]:
        yield path, None, 0.0
    if isinstance(model, (str, Path)):
        model = load_model(model, process_device(device), precision)
    for path, volume in read_ahead(todo, load_volume):
        start = time.perf_counter()
        result = segment(model, volume, auto_prompt=auto_prompt, **options)
        outputs = zip((result.labels, result.auto_prompt), plan[path])
        yield path, [save_volume(v, o, overwrite) for v, o in outputs], time.perf_counter() - start
