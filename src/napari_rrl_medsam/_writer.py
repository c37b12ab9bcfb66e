"""napari writers: Labels and Image layers to NIfTI, on the voxel grid and affine they were read with.

The layer's world transform (scale, translate, rotate, shear, affine) gives its geometry. When the
layer still covers the voxels of the file it came from (its metadata says which), the data are
put back on that file's grid exactly, so the output overlays the source in any medical viewer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .api import Grid, InputError, Kind, Volume, resample, same_voxels, save_volume


def layer_affine(meta: dict) -> np.ndarray:
    """The 4x4 data-to-RAS (mm) matrix of a layer from its state: napari's data-to-world transform (it composes
    affine after the rest), then world to RAS when the layer is in the reader's radiological frame."""
    from napari.utils.transforms import Affine

    from ._reader import FRAME, WORLD_FROM_RAS

    ndim = len(meta["scale"])
    base = Affine(
        scale=meta["scale"], translate=meta["translate"], rotate=meta.get("rotate"), shear=meta.get("shear"), ndim=ndim
    )
    world = Affine(affine_matrix=np.asarray(meta["affine"]), ndim=ndim) if meta.get("affine") is not None else None
    matrix = (world.compose(base) if world is not None else base).affine_matrix
    radiological = (meta.get("metadata") or {}).get(FRAME) == "radiological"
    return WORLD_FROM_RAS @ matrix if radiological else matrix


def layer_volume(data: Any, meta: dict, kind: Kind) -> Volume:
    """A layer (its data and `as_layer_data_tuple` state) as a `Volume`: back on the exact grid and affine of the
    file it came from while it still covers those voxels, else in the layer's own world geometry.

    The writer and the dock widgets share it, so what a widget computes on is what the writer would save.
    """
    if isinstance(data, list):  # multiscale: the full-resolution level
        data = data[0]
    array = np.asarray(data)
    if array.ndim != 3:
        raise InputError(f"NIfTI output needs a 3D layer; this layer is {array.ndim}D (shape {array.shape}).")
    md = meta.get("metadata") or {}
    extra = {"nifti_header": md["nifti_header"]} if "nifti_header" in md else {}
    volume = Volume(array, layer_affine(meta), kind, metadata=extra)
    if md.get("source_affine") is not None and md.get("source_shape") is not None:
        source = Grid(tuple(md["source_shape"]), np.asarray(md["source_affine"]))
        if same_voxels(volume.grid, source):
            volume = resample(volume, source)
            volume = Volume(volume.array, source.affine, kind, metadata=extra)  # the exact source matrix
    return volume


def _write(path: str, data: Any, meta: dict, kind: Kind) -> list[str]:
    # napari's save dialog has already asked before replacing a file.
    return [str(save_volume(layer_volume(data, meta, kind), Path(path), overwrite=True))]


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    return _write(path, data, meta, "labels")


def write_image(path: str, data: Any, meta: dict) -> list[str]:
    return _write(path, data, meta, "image")
