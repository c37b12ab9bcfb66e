"""Dense displacement fields in world space and warping volumes through them, on any grid.

A `Field` holds, at every voxel centre p of its grid, the displacement u(p) in mm (world axes) that
takes a point of the fixed (target) image to the corresponding point p + u(p) of the moving
(atlas) image. Because the field lives in world space, an atlas label map can be warped straight
from its native grid onto the target's native grid, without ever quantising labels at the
coarser working resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    def from_voxels(cls, ddf_voxels: np.ndarray, grid: Grid) -> Field:
        """From a displacement in voxel units along the grid's array axes (what MONAI's `Warp` uses)."""
        linear = grid.affine[:3, :3]
        return cls(np.einsum("ij,j...->i...", linear, ddf_voxels).astype(np.float32), grid)

    def to_voxels(self) -> np.ndarray:
        """The displacement in voxel units along the grid's array axes."""
        inv = np.linalg.inv(self.grid.affine[:3, :3])
        return np.einsum("ij,j...->i...", inv, self.array).astype(np.float32)

    def sample(self, grid: Grid) -> np.ndarray:
        """The field linearly interpolated at the voxel centres of another grid: (3, *grid.shape) mm.

        Beyond the field's grid the edge value holds (a field does not fade to zero outside).
        """
        return resample_linear(self.array, self.grid, grid)

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
    world = _mapped_centres(target.affine, target) + u
    inv = np.linalg.inv(moving.affine).astype(np.float32)
    return np.einsum("ij,j...->i...", inv[:3, :3], world) + inv[:3, 3, None, None, None]


def resample_linear(array: np.ndarray, source: Grid, grid: Grid) -> np.ndarray:
    """`array` ((C,) *source.shape) linearly interpolated at the voxel centres of `grid`; edge values continue."""
    return interpolate(array, _mapped_centres(np.linalg.solve(source.affine, grid.affine), grid), padding="border")


def argmax_resampled(
    probs: np.ndarray,
    source: Grid,
    grid: Grid,
    chunk: int = 8,
    prior: np.ndarray | None = None,
    prior_weight: float = 0.0,
    coarse: np.ndarray | None = None,
) -> np.ndarray:
    """Index of the most likely class at each voxel of `grid`, from class probabilities (C, *source.shape)
    interpolated linearly (outside `source`: class 0). Deciding after interpolation keeps the detail a coarse
    grid's probabilities hold (+0.007 mean Dice against interpolating the coarse arg-max, measured).
    `prior`: class indices on `grid` (-1: none) fused as (1 - w) p_k + w [prior == k], w = `prior_weight`.

    Exact and fast: where the 8 source voxels around a voxel share their most likely class, so does every linear
    mix of their probabilities, so only the voxels between source voxels that differ (structure boundaries) are
    interpolated, class by class in chunks (memory: a few volumes). `coarse`: `probs`'s arg-max, when at hand."""
    coords = _mapped_centres(np.linalg.solve(source.affine, grid.affine), grid)
    w = float(prior_weight) if prior is not None else 0.0
    out = _shared_class(_argmax(probs) if coarse is None else coarse, coords)
    if w:  # a prior for another class can change the decision there
        out[(prior >= 0) & (prior != out)] = -1
    todo = out == -1
    if todo.any():
        points = coords[:, todo][:, :, None, None]  # (3, N, 1, 1): `interpolate` samples a 3D block
        fuse = prior[todo][:, None, None] if w else None
        out[todo] = _argmax_interpolated(probs, points, chunk, fuse, w)[:, 0, 0]
    return out


def _argmax(probs: np.ndarray) -> np.ndarray:
    """The first most likely class per voxel (PyTorch's threaded arg-max; numpy's tie rule)."""
    import torch

    return torch.from_numpy(probs).argmax(0).numpy()


def _shared_class(coarse: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """The class (`coarse`: arg-max per source voxel) of the 8 source voxels around each of `coords` when they all
    have it; 0 where all 8 lie outside the source, -1 where they differ or some lie outside.

    Decided once per cell of 8 neighbouring source voxels (the source padded by 2 with "outside"), then looked up
    for each point by the cell it falls in."""
    outside = -3
    padded = np.pad(coarse.astype(np.int16), 2, constant_values=outside)
    first = padded[:-1, :-1, :-1]
    same = np.ones(first.shape, bool)
    for corner in list(np.ndindex(2, 2, 2))[1:]:
        same &= padded[tuple(slice(c, padded.shape[a] - 1 + c) for a, c in enumerate(corner))] == first
    cells = np.where(same, np.where(first == outside, 0, first), -1)
    index = [np.clip(np.floor(coords[a]).astype(np.int32) + 2, 0, cells.shape[a] - 1) for a in range(3)]
    return cells[tuple(index)].astype(np.int64)


def _argmax_interpolated(probs, coords, chunk: int, prior, w: float) -> np.ndarray:
    """The most likely class at `coords` (3, *out) after linear interpolation (and the prior's vote)."""
    import torch

    shape = coords.shape[1:]
    best = torch.full(shape, -1.0)
    out = torch.zeros(shape, dtype=torch.int64)
    for start in range(0, len(probs), chunk):
        p = torch.from_numpy(interpolate(probs[start : start + chunk], coords))
        if w:
            k = torch.arange(start, start + len(p)).view(-1, *([1] * len(shape)))
            p = (1 - w) * p + w * (torch.from_numpy(prior)[None] == k)
        value, index = p.max(0)  # the first of equal maxima, as a class-by-class strict comparison would keep
        better = value > best
        best, out = torch.where(better, value, best), torch.where(better, index + start, out)
    return out.numpy()


def _mapped_centres(matrix: np.ndarray, grid: Grid) -> np.ndarray:
    """The voxel centres of `grid` through a 4x4 `matrix`: (3, *grid.shape) float32."""
    m = matrix.astype(np.float32)  # float64 here would cost 10x on a 1 mm grid
    return (m[:3, :3] @ np.indices(grid.shape, dtype=np.float32).reshape(3, -1) + m[:3, 3:4]).reshape(3, *grid.shape)


def warp(
    moving: Volume, field: Field, target: Grid, order: int | None = None, coords: np.ndarray | None = None
) -> Volume:
    """`moving` resampled onto `target` through `field`: out(p) = moving(p + u(p)) for p on `target`.

    Label maps by nearest neighbour (or `order=1`: linear one-hot, then the most likely label);
    images linearly. Outside the moving image is 0. `coords`: from `source_coordinates`, if at hand.
    """
    from scipy import ndimage

    if order is None:
        order = 0 if moving.kind == "labels" else 1
    if coords is None:
        coords = source_coordinates(field, moving.grid, target)
    if order == 0:  # labels keep their values and dtype exactly
        out = ndimage.map_coordinates(moving.array, coords, order=0, cval=0, prefilter=False)
    elif moving.kind == "labels":  # linear one-hot, then the most likely label (at least half a voxel's weight)
        best = np.full(target.shape, 0.5, np.float32)
        out = np.zeros(target.shape, moving.array.dtype)
        for value in np.unique(moving.array):
            if value == 0:
                continue
            prob = interpolate((moving.array == value).astype(np.float32), coords)
            better = prob > best
            best[better], out[better] = prob[better], value
    else:
        out = interpolate(moving.array, coords)
    return Volume(out, target.affine, moving.kind, moving.path, dict(moving.metadata))


def label_shares(
    labels: Volume, classes: Sequence[int], target: Grid, field: Field | None = None, coords: np.ndarray | None = None
) -> np.ndarray:
    """The share of each class in each voxel of `target`: (C, *target.shape) float16, summing to 1.

    Each class's mask is interpolated linearly from `labels`' native grid (through `field` if given), so a coarse
    voxel on a boundary holds the partial volume of each structure instead of one nearest label: at 1 mm -> 2 mm,
    these shares interpolated back and arg-maxed give 0.93 mean Dice against the 1 mm labels, nearest labels 0.87
    (docs/benchmarks.md). Class 0 (background) is what the others leave, outside `labels` included.

    Args:
        labels: a label map.
        classes: the label values in class-index order, background (0) first.
        target: the grid of the result.
        field: the warp (target point -> labels point), or None for a plain resampling.
        coords: from `source_coordinates(field, labels.grid, target)`, if at hand.
    """
    if coords is None:
        coords = (
            source_coordinates(field, labels.grid, target)
            if field is not None
            else _mapped_centres(np.linalg.solve(labels.grid.affine, target.affine), target)
        )
    shares = np.zeros((len(classes), *target.shape), np.float32)
    for k, value in enumerate(classes[1:], start=1):
        shares[k] = interpolate((labels.array == value).astype(np.float32), coords)
    shares[0] = np.clip(1 - shares[1:].sum(0), 0, 1)
    return shares.astype(np.float16)


def interpolate(array: np.ndarray, coords: np.ndarray, padding: str = "zeros") -> np.ndarray:
    """Trilinear samples of `array` ((C,) X, Y, Z) at voxel coordinates `coords` (3, *out) -> ((C,) *out) float32.

    PyTorch's `grid_sample` (threaded; 4-5x faster than scipy's `map_coordinates` on a 1 mm brain here).
    `padding`: "zeros" (outside is 0) or "border" (the edge value continues).
    """
    import torch
    from torch.nn import functional as F

    src = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    channels = src.ndim == 4
    src = src if channels else src[None]
    shape = src.shape[1:]
    # grid_sample wants (x, y, z) = (last, middle, first) array axis, each in [-1, 1] (align_corners: voxel centres)
    grid = torch.stack([torch.from_numpy(coords[a]) * (2.0 / max(shape[a] - 1, 1)) - 1 for a in (2, 1, 0)], -1)
    with torch.no_grad():
        out = F.grid_sample(src[None], grid[None], mode="bilinear", padding_mode=padding, align_corners=True)[0]
    return (out if channels else out[0]).numpy()
