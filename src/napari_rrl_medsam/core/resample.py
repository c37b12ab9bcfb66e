"""Moving volumes between grids: the native grid of a file and the working grid the models see.

The working grid is RAS-oriented and isotropic (e.g. 2 mm) and covers the whole field of view, so
every scan reaches the networks the same way whatever its orientation or voxel size. Going back
to the native grid restores the exact shape and affine. Reorientations (axis flips and
permutations) are detected and done by exact re-indexing, so they lose nothing.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError
from .volume import Grid, Volume


def working_grid(grid: Grid | Volume, spacing: float = 2.0) -> Grid:
    """An RAS-oriented isotropic grid of voxel size `spacing` mm covering `grid`'s field of view.

    Args:
        grid: a grid or a volume.
        spacing: the voxel size in mm.
    """
    if isinstance(grid, Volume):
        grid = grid.grid
    if spacing <= 0:
        raise InputError(f"the working spacing must be positive, got {spacing} mm")
    shape = np.array(grid.shape[:3], dtype=float)
    corners = np.array(
        [[i, j, k] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5) for k in (-0.5, shape[2] - 0.5)]
    )
    world = corners @ grid.affine[:3, :3].T + grid.affine[:3, 3]
    low, high = world.min(axis=0), world.max(axis=0)
    new_shape = np.maximum(np.ceil((high - low) / spacing - 1e-6), 1).astype(int)
    first_centre = (low + high) / 2 - (new_shape - 1) * spacing / 2
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = first_centre
    return Grid(tuple(new_shape), affine)


def _index_map(source: Grid, target: Grid) -> np.ndarray:
    """4x4 matrix taking a target voxel index to the source voxel index at the same world point."""
    return np.linalg.solve(source.affine, target.affine)


def is_exact_map(source: Grid, target: Grid, atol: float = 1e-4) -> bool:
    """True when target voxels sit exactly on source voxels (same spacing, flips/permutations, integer shifts)."""
    m = _index_map(source, target)
    return bool(np.allclose(m, np.round(m), atol=atol) and np.allclose(np.abs(np.round(m[:3, :3])).sum(0), 1))


def same_voxels(source: Grid, target: Grid) -> bool:
    """True when `target` holds exactly the voxels of `source`, maybe reoriented: a lossless change of grid.

    Args:
        source, target: the two grids.
    """
    if not is_exact_map(source, target) or np.prod(source.shape) != np.prod(target.shape):
        return False
    m = np.round(_index_map(source, target))
    corners = (
        np.array(
            [
                [i, j, k, 1]
                for i in (0, target.shape[0] - 1)
                for j in (0, target.shape[1] - 1)
                for k in (0, target.shape[2] - 1)
            ]
        )
        @ m.T
    )
    return bool(np.all(corners[:, :3] >= 0) and np.all(corners[:, :3] <= np.array(source.shape) - 1))


def resample(volume: Volume, target: Grid, order: int | None = None) -> Volume:
    """`volume` on the `target` grid; outside the source's field of view is 0.

    Images: linear by default (`order` is the spline order). Label maps: nearest neighbour by
    default; `order=1` interpolates each label's mask linearly and keeps the most likely label,
    which follows boundaries much better when changing resolution. When the target's voxels
    coincide with the source's (identity, reorientation, integer shift), values are copied exactly.

    Args:
        volume: an image or label map.
        target: the grid to sample it on.
        order: the interpolation: None (linear for images, nearest for labels), 0, 1, 3 (spline order).
    """
    if volume.array.ndim != 3:
        raise InputError(f"resampling needs a 3D volume, got shape {volume.shape}")
    if order is None:
        order = 0 if volume.kind == "labels" else 1
    m = _index_map(volume.grid, target)
    if is_exact_map(volume.grid, target):
        m, order = np.round(m), 0
    if volume.kind == "labels" and order > 0:
        out = _soft_labels(volume.array, m, target.shape)
    else:
        out = _affine(volume.array, m, target.shape, order)
    return Volume(out, target.affine, volume.kind, volume.path, dict(volume.metadata))


def _affine(array: np.ndarray, m: np.ndarray, shape: tuple[int, ...], order: int) -> np.ndarray:
    from scipy import ndimage

    if order > 0 and not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
    return ndimage.affine_transform(
        array, m[:3, :3], offset=m[:3, 3], output_shape=shape, order=order, mode="constant", cval=0, prefilter=False
    )


def _soft_labels(labels: np.ndarray, m: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Linear interpolation of each label's one-hot mask, then the arg-max (background where all are < 0.5).

    Each label is interpolated only inside the target box its source bounding box maps to.
    """
    best = np.full(shape, 0.5, dtype=np.float32)  # background wins ties below one half
    out = np.zeros(shape, dtype=labels.dtype)
    inv = np.linalg.inv(m)
    for value in np.unique(labels):
        if value == 0:
            continue
        idx = np.nonzero(labels == value)
        lo = np.array([i.min() for i in idx]) - 1
        hi = np.array([i.max() for i in idx]) + 1
        corners = np.array([[a, b, c, 1] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
        tc = corners @ inv.T
        start = np.clip(np.floor(tc[:, :3].min(0)).astype(int), 0, shape)
        stop = np.clip(np.ceil(tc[:, :3].max(0)).astype(int) + 1, 0, shape)
        if np.any(stop <= start):
            continue
        shift = np.eye(4)
        shift[:3, 3] = start
        box = tuple(slice(a, b) for a, b in zip(start, stop))
        prob = _affine((labels == value).astype(np.float32), m @ shift, tuple(stop - start), 1)
        better = prob > best[box]
        best[box][better] = prob[better]
        out[box][better] = value
    return out


def to_working(volume: Volume, spacing: float = 2.0) -> Volume:
    """`volume` resampled onto its working grid (`working_grid(volume, spacing)`).

    Args:
        volume: an image or label map.
        spacing: the working voxel size in mm.
    """
    return resample(volume, working_grid(volume, spacing))


def reorient_canonical(volume: Volume) -> Volume:
    """The same voxels with axes flipped/permuted to the closest RAS orientation (exact, no interpolation).

    Args:
        volume: an image or label map.
    """
    import nibabel.orientations as nio

    ornt = nio.io_orientation(volume.affine)
    if np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]):
        return volume
    array = nio.apply_orientation(volume.array, ornt)
    affine = volume.affine @ nio.inv_ornt_aff(ornt, volume.shape)
    return Volume(np.ascontiguousarray(array), affine, volume.kind, volume.path, dict(volume.metadata))


def from_canonical(canonical: Volume, like: Volume) -> Volume:
    """`reorient_canonical`'s inverse: a volume on `like`'s canonical grid back on `like`'s own voxel grid and
    affine (exact: the same flips and permutations undone).

    Args:
        canonical: a volume on `reorient_canonical(like)`'s grid (e.g. a mask made there).
        like: the volume whose grid it returns to.
    """
    import nibabel.orientations as nio

    ornt = nio.io_orientation(like.affine)
    back = nio.ornt_transform(np.array([[0, 1], [1, 1], [2, 1]]), ornt)
    array = np.ascontiguousarray(nio.apply_orientation(canonical.array, back))
    return Volume(array, like.affine, canonical.kind, None, dict(canonical.metadata))


def normalise_intensity(array: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Clip to the [low, high] percentiles and scale to [0, 1] (float32): robust to hot voxels.

    Args:
        array: the intensities.
        low, high: the percentiles clipped to.
    """
    array = np.asarray(array, dtype=np.float32)
    lo, hi = np.percentile(array, [low, high])
    if hi <= lo:
        return np.zeros_like(array)
    return np.clip((array - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)


def foreground(intensities: np.ndarray, threshold: float = 0.05, margin: int = 2) -> np.ndarray:
    """The head / body in an image: voxels above `threshold` of the normalised intensity range, gaps closed, inner
    holes (ventricles, dark structures) filled, the largest connected part kept, grown by `margin` voxels.

    Args:
        intensities: a 3D image (any range; normalised here as `normalise_intensity` does).
        threshold: the share of the robust intensity range above which a voxel is tissue.
        margin: voxels added around the result, so a dark rim of the anatomy is never cut.
    """
    from scipy import ndimage

    mask = normalise_intensity(intensities) > threshold
    mask = ndimage.binary_closing(mask, iterations=2, border_value=0)
    mask = ndimage.binary_fill_holes(mask)
    parts, n = ndimage.label(mask)
    if n > 1:  # specks of noise outside the anatomy
        sizes = np.bincount(parts.ravel())[1:]
        mask = parts == 1 + int(np.argmax(sizes))
    return ndimage.binary_dilation(mask, iterations=margin) if margin > 0 else mask
