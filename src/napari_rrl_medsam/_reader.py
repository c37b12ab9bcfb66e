"""napari reader: NIfTI and TIFF volumes as layers placed by their physical geometry.

Axis flips and permutations are undone exactly (closest RAS orientation) so napari slices along
anatomical axes; voxel size and origin become the layer's scale and translate, and a remaining
rotation (oblique scans) becomes the layer's affine. The file's own affine, shape and header stay
in the layer metadata so the writer can put the voxels back exactly where they came from.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .api import Volume, is_volume_path, load_volume, reorient_canonical

LayerData = tuple[Any, dict, str]


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    return read_volumes if paths and all(is_volume_path(p) for p in paths) else None


def read_volumes(path: str | list[str]) -> list[LayerData]:
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    return [layer_data(load_volume(p)) for p in paths]


def layer_data(volume: Volume, name: str | None = None) -> LayerData:
    """A napari layer-data tuple for `volume` (see the module docstring for how geometry is mapped)."""
    canon = reorient_canonical(volume)
    linear = canon.affine[:3, :3]
    metadata = {"source_affine": volume.affine, "source_shape": volume.shape}
    if volume.path is not None:
        metadata["source_path"] = str(volume.path)
    if "nifti_header" in volume.metadata:
        metadata["nifti_header"] = volume.metadata["nifti_header"]
    kwargs: dict[str, Any] = {"name": name or volume.name, "metadata": metadata}
    if np.array_equal(linear, np.diag(np.diag(linear))) and np.all(np.diag(linear) > 0):
        kwargs["scale"] = tuple(np.diag(linear))
        kwargs["translate"] = tuple(canon.affine[:3, 3])
    else:
        kwargs["affine"] = canon.affine
    if volume.kind == "image":
        kwargs["colormap"] = "gray"
    return canon.array, kwargs, volume.kind
