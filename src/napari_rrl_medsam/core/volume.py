"""The `Volume` (array + voxel-to-world affine) and the `Grid` it lives on.

Geometry travels with the data everywhere so that outputs line up with their source in any viewer.
World coordinates are millimetres in the file's frame (RAS+ for NIfTI); TIFF volumes, which carry no
orientation, map their array axes (Z, Y, X) to world axes in that order, as napari shows them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

Kind = Literal["image", "labels"]


@dataclass(frozen=True, eq=False)
class Grid:
    """A voxel grid: its shape and the 4x4 affine from voxel index to world (mm)."""

    shape: tuple[int, ...]
    affine: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "affine", np.asarray(self.affine, dtype=np.float64))
        if self.affine.shape != (4, 4):
            raise ValueError(f"a grid affine must be 4x4, got {self.affine.shape}")

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis (column norms of the affine)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    def coverage(self, other: Grid) -> float:
        """The fraction of this grid's box that `other`'s box covers in world space (boxes through the corners).

        Args:
            other: another grid, e.g. a target volume's against the atlas's working grid.
        """
        corners = np.array(
            [
                [i, j, k, 1.0]
                for i in (-0.5, other.shape[0] - 0.5)
                for j in (-0.5, other.shape[1] - 0.5)
                for k in (-0.5, other.shape[2] - 0.5)
            ]
        )
        inside = (np.linalg.inv(self.affine) @ other.affine @ corners.T)[:3]  # other's corners, our voxels
        size = np.array(self.shape[:3], float)
        low, high = np.clip(inside.min(1), -0.5, size - 0.5), np.clip(inside.max(1), -0.5, size - 0.5)
        return float(np.prod(np.maximum(high - low, 0)) / np.prod(size))

    def same_as(self, other: Grid, atol: float = 1e-4) -> bool:
        """True when both grids have the same shape and (to `atol` mm) the same affine."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=atol))

    def to_dict(self) -> dict:
        """The grid as plain lists (how checkpoints store it)."""
        return {"shape": list(self.shape), "affine": np.asarray(self.affine).tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> Grid:
        """A grid from `to_dict`'s form.

        Args:
            d: {"shape": [X, Y, Z], "affine": 4 x 4 nested lists}.
        """
        return cls(tuple(d["shape"]), np.array(d["affine"]))


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D array with its voxel-to-world affine; `kind` says whether it is an image or a label map."""

    array: np.ndarray
    affine: np.ndarray
    kind: Kind = "image"
    path: Path | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "affine", np.asarray(self.affine, dtype=np.float64))
        if self.affine.shape != (4, 4):
            raise ValueError(f"a volume affine must be 4x4, got {self.affine.shape}")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def grid(self) -> Grid:
        return Grid(self.shape, self.affine)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.grid.spacing

    @property
    def name(self) -> str:
        return volume_id(self.path) if self.path else "volume"

    def with_array(self, array: np.ndarray, kind: Kind | None = None) -> Volume:
        """The same geometry holding another array of the same shape (e.g. a segmentation of this image)."""
        if tuple(array.shape) != self.shape:
            raise ValueError(f"array shape {tuple(array.shape)} does not match the volume's {self.shape}")
        return replace(self, array=array, kind=kind or self.kind)


def volume_id(path: str | Path) -> str:
    """A file's name without its volume suffixes: `sub-01_T1w.nii.gz` -> `sub-01_T1w`."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem
