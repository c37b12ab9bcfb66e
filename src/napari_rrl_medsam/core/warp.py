"""Dense displacement fields in world space and warping volumes through them, on any grid.

A `Field` holds, at every voxel centre p of its grid, the displacement u(p) in mm (world axes) that
takes a point of the fixed (target) image to the corresponding point p + u(p) of the moving
(atlas) image. Because the field lives in world space, an atlas label map can be warped straight
from its native grid onto the target's native grid, without ever quantising labels at the
coarser working resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .volume import Grid, Volume


@dataclass(frozen=True, eq=False)
class Field:
    """Displacements `array` (3, *grid.shape) in mm, world axes, sampled at the voxels of `grid`."""

    array: np.ndarray
    grid: Grid

    def __post_init__(self) -> None:
        if self.array.shape != (3, *self.grid.shape):
            raise ValueError(f"a field on grid {self.grid.shape} needs shape (3, *shape), got {self.array.shape}")

    @classmethod
    def from_voxels(cls, ddf_voxels: np.ndarray, grid: Grid) -> "Field":
        """From a displacement in voxel units along the grid's array axes (what MONAI's `Warp` uses)."""
        linear = grid.affine[:3, :3]
        return cls(np.einsum("ij,j...->i...", linear, ddf_voxels).astype(np.float32), grid)

    def to_voxels(self) -> np.ndarray:
        """The displacement in voxel units along the grid's array axes."""
        inv = np.linalg.inv(self.grid.affine[:3, :3])
        return np.einsum("ij,j...->i...", inv, self.array).astype(np.float32)

    def sample(self, grid: Grid) -> np.ndarray:
        """The field linearly interpolated at the voxel centres of another grid: (3, *grid.shape) mm."""
        from scipy import ndimage

        m = np.linalg.solve(self.grid.affine, grid.affine)
        return np.stack([ndimage.affine_transform(c, m[:3, :3], offset=m[:3, 3], output_shape=grid.shape, order=1,
                                                  mode="nearest") for c in self.array])

    def jacobian_determinant(self) -> np.ndarray:
        """det(I + grad u) at each voxel (in the field's own grid); <= 0 means the mapping folds."""
        u = self.to_voxels()
        grads = np.stack([np.stack(np.gradient(c), axis=0) for c in u])  # (3 comps, 3 axes, ...)
        jac = grads + np.eye(3)[:, :, None, None, None]
        return np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1)))

    def folding_fraction(self) -> float:
        """Share of voxels whose Jacobian determinant is <= 0."""
        return float((self.jacobian_determinant() <= 0).mean())


def source_coordinates(field: Field, moving: Grid, target: Grid) -> np.ndarray:
    """For each voxel p of `target`, the voxel coordinates in `moving` of p + u(p): (3, *target.shape) float32.

    Compute once and pass to `warp` for several volumes on the same moving grid (an image and its labels).
    """
    u = field.sample(target) if not target.same_as(field.grid, 1e-6) else field.array
    index = np.indices(target.shape, dtype=np.float32).reshape(3, -1)
    world = target.affine[:3, :3] @ index + target.affine[:3, 3:4] + u.reshape(3, -1)
    inv = np.linalg.inv(moving.affine)
    return (inv[:3, :3] @ world + inv[:3, 3:4]).astype(np.float32).reshape(3, *target.shape)


def warp(moving: Volume, field: Field, target: Grid, order: int | None = None,
         coords: np.ndarray | None = None) -> Volume:
    """`moving` resampled onto `target` through `field`: out(p) = moving(p + u(p)) for p on `target`.

    Label maps by nearest neighbour (or `order=1`: linear one-hot, then the most likely label);
    images linearly. Outside the moving image is 0. `coords`: from `source_coordinates`, if at hand.
    """
    from scipy import ndimage

    if order is None:
        order = 0 if moving.kind == "labels" else 1
    if coords is None:
        coords = source_coordinates(field, moving.grid, target)
    if moving.kind == "labels" and order > 0:
        best = np.full(target.shape, 0.5, np.float32)
        out = np.zeros(target.shape, moving.array.dtype)
        for value in np.unique(moving.array):
            if value == 0:
                continue
            prob = ndimage.map_coordinates((moving.array == value).astype(np.float32), coords, order=1, cval=0)
            better = prob > best
            best[better], out[better] = prob[better], value
    else:
        source = moving.array if order == 0 else moving.array.astype(np.float32, copy=False)
        out = ndimage.map_coordinates(source, coords, order=order, cval=0, prefilter=False)
    return Volume(out, target.affine, moving.kind, moving.path, dict(moving.metadata))
