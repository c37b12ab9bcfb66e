"""napari reader: NIfTI and TIFF volumes as layers placed by their physical geometry.

Medical volumes (NIfTI) are shown the way radiologists read them. Axis flips and permutations are undone exactly,
and the voxels are laid out along napari's world axes (inferior, posterior, left) in millimetres: RAS reversed and
negated (`WORLD_FROM_RAS`). napari draws its first axis as the slider, its second downwards and its third to the
right, so a volume opens on an axial slice with anterior at the top and the patient's right on the screen's left
(radiological convention), and coronal or sagittal views (the axes rolled) have superior at the top. Voxel size and
origin become the layer's scale and translate, a remaining rotation (oblique scans) the layer's affine; the axes
are named and their unit is mm. TIFF carries no orientation: its array axes (Z, Y, X) stay napari's world axes, as
napari shows them. The file's own affine, shape and header stay in the layer metadata (with the world frame used)
so the writer can put the voxels back exactly where they came from.
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


# napari world axes <-> RAS mm: (x, y, z) -> (-z, -y, -x); the matrix is its own inverse
WORLD_FROM_RAS = np.array([[0, 0, -1, 0], [0, -1, 0, 0], [-1, 0, 0, 0], [0, 0, 0, 1.0]])
AXIS_LABELS = ("inferior", "posterior", "left")  # what grows along each world axis
FRAME = "world_frame"  # layer metadata: "radiological" (the axes above) or "array" (TIFF: the array's own axes)


def layer_data(volume: Volume, name: str | None = None, frame: str | None = None) -> LayerData:
    """A napari layer-data tuple for `volume` (see the module docstring for how geometry is mapped).

    Args:
        volume: the volume.
        name: the layer name (default: the file's).
        frame: "radiological" or "array"; None: "array" for a TIFF file, else "radiological".
    """
    if frame is None:
        tiff = volume.path is not None and volume.path.name.lower().endswith((".tif", ".tiff"))
        frame = "array" if tiff else "radiological"
    canon = reorient_canonical(volume)
    array, affine = (canon.array, canon.affine) if frame == "array" else radiological(canon)
    linear = affine[:3, :3]
    metadata = {"source_affine": volume.affine, "source_shape": volume.shape, FRAME: frame}
    if volume.path is not None:
        metadata["source_path"] = str(volume.path)
    if "nifti_header" in volume.metadata:
        metadata["nifti_header"] = volume.metadata["nifti_header"]
    kwargs: dict[str, Any] = {"name": name or volume.name, "metadata": metadata}
    if np.array_equal(linear, np.diag(np.diag(linear))) and np.all(np.diag(linear) > 0):
        kwargs["scale"] = tuple(np.diag(linear))
        kwargs["translate"] = tuple(affine[:3, 3])
    else:
        kwargs["affine"] = affine
    if frame == "radiological":
        kwargs["axis_labels"], kwargs["units"] = AXIS_LABELS, ("mm", "mm", "mm")
    if volume.kind == "image":
        kwargs["colormap"] = "gray"
    return array, kwargs, volume.kind


def radiological(canon: Volume) -> tuple[np.ndarray, np.ndarray]:
    """A canonical (RAS) volume's voxels laid out along the world axes (inferior, posterior, left), and the
    data-to-world matrix: positive and diagonal when the volume's axes are the world's (no rotation)."""
    nx, ny, nz = canon.shape
    index = np.array([[0, 0, -1, nx - 1], [0, -1, 0, ny - 1], [-1, 0, 0, nz - 1], [0, 0, 0, 1.0]])  # ours -> RAS's
    array = np.ascontiguousarray(canon.array[::-1, ::-1, ::-1].transpose(2, 1, 0))
    return array, WORLD_FROM_RAS @ canon.affine @ index
