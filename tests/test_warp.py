import numpy as np
import pytest
from conftest import blobs, oblique_affine

from napari_rrl_medsam.api import Grid, Volume
from napari_rrl_medsam.core.warp import Field, warp


def test_a_known_shift_moves_labels_and_keeps_values():
    affine = oblique_affine()
    atlas = Volume(blobs(), affine, kind="labels")
    shift_vox = np.array([2.0, -1.0, 3.0])
    # a constant field of +shift (in voxels of the atlas grid): out(p) = atlas(p + shift)
    field = Field.from_voxels(np.broadcast_to(shift_vox[:, None, None, None], (3, *atlas.shape)).copy(), atlas.grid)
    assert np.allclose(field.to_voxels()[:, 0, 0, 0], shift_vox, atol=1e-5)
    out = warp(atlas, field, atlas.grid)
    expected = np.zeros_like(atlas.array)
    expected[:-2, 1:, :-3] = atlas.array[2:, :-1, 3:]
    assert np.array_equal(out.array, expected)
    assert set(np.unique(out.array)) <= set(np.unique(atlas.array))
    assert field.folding_fraction() == 0.0


def test_warp_onto_another_grid_keeps_that_grid():
    atlas = Volume(blobs(), np.eye(4), kind="labels")
    coarse = Grid((8, 10, 12), np.diag([2.0, 2.0, 2.0, 1.0]))
    field = Field(np.zeros((3, *coarse.shape), np.float32), coarse)
    native = Grid(atlas.shape, np.eye(4))
    out = warp(atlas, field, native)  # zero field sampled onto the fine grid: identity
    assert np.array_equal(out.array, atlas.array) and np.array_equal(out.affine, np.eye(4))


def test_folding_is_detected():
    grid = Grid((12, 12, 12), np.eye(4))
    u = np.zeros((3, 12, 12, 12), np.float32)
    u[0] = -2.5 * np.arange(12)[:, None, None]  # x -> x - 2.5x: the mapping reverses axis 0
    assert Field(u, grid).folding_fraction() == pytest.approx(1.0)


def test_images_are_warped_trilinearly_and_fields_sampled_with_edge_values():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    image = Volume(rng.random((10, 12, 14)).astype(np.float32), oblique_affine(), kind="image")
    shift = np.array([0.3, -1.6, 2.25])
    field = Field.from_voxels(np.broadcast_to(shift[:, None, None, None], (3, *image.shape)).copy(), image.grid)
    out = warp(image, field, image.grid).array
    coords = np.indices(image.shape, dtype=np.float32) + shift.astype(np.float32)[:, None, None, None]
    expected = ndimage.map_coordinates(image.array, coords, order=1, cval=0, prefilter=False)
    inside = (slice(0, -1), slice(2, None), slice(0, -3))  # where the source point lies within the image
    assert np.allclose(out[inside], expected[inside], atol=1e-5)
    # a field sampled beyond its own grid keeps its edge value (no fade to zero)
    ramp = Field(
        np.broadcast_to(np.arange(6, dtype=np.float32)[None, :, None, None], (3, 6, 6, 6)).copy(),
        Grid((6, 6, 6), np.eye(4)),
    )
    wider = Grid((10, 6, 6), np.array([[1.0, 0, 0, -2], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]))
    assert np.allclose(ramp.sample(wider)[:, :, 0, 0], [[0, 0, 0, 1, 2, 3, 4, 5, 5, 5]] * 3)


def test_class_probabilities_are_interpolated_before_deciding():
    from napari_rrl_medsam.core.warp import argmax_resampled

    coarse = Grid((4, 4, 4), np.diag([2.0, 2.0, 2.0, 1.0]))
    ramp = np.linspace(0.0, 1.0, 4, dtype=np.float32)[:, None, None] * np.ones((4, 4, 4), np.float32)
    probs = np.stack([0.6 - 0.4 * ramp, 0.1 + 0.2 * ramp, 0.3 + 0.2 * ramp])  # class 1 never wins a coarse voxel
    assert set(np.unique(np.argmax(probs, 0))) == {0, 2}
    assert np.array_equal(argmax_resampled(probs, coarse, coarse, chunk=2), np.argmax(probs, 0))  # same grid
    fine = Grid((8, 8, 8), np.array([[1.0, 0, 0, -0.5], [0, 1, 0, -0.5], [0, 0, 1, -0.5], [0, 0, 0, 1]]))
    out = argmax_resampled(probs, coarse, fine, chunk=2)
    # along the first axis at 1 mm the switch from class 0 to 2 falls where the interpolated curves cross:
    # 0.6 - 0.4 t = 0.3 + 0.2 t at t = 0.5, i.e. 3 mm (the coarse grid's arg-max switches between 2 and 4 mm)
    x = fine.affine[0, 0] * np.arange(8) + fine.affine[0, 3]
    assert np.array_equal(out[:, 3, 3], np.where(x < 3.0, 0, 2))
    beyond = Grid((2, 2, 2), np.diag([1.0, 1.0, 1.0, 1.0]) + np.array([[0, 0, 0, 50]] * 3 + [[0, 0, 0, 0]]))
    assert not argmax_resampled(probs, coarse, beyond).any()  # outside the source: class 0


def test_the_fast_arg_max_is_the_arg_max_of_every_interpolated_voxel():
    """Interpolating only between source voxels that differ gives what interpolating everywhere gives, on an oblique
    grid reaching beyond the source, with and without a prior, ties included."""
    from scipy import ndimage

    from napari_rrl_medsam.core.warp import _argmax_interpolated, _mapped_centres, _shared_class, argmax_resampled

    rng = np.random.default_rng(0)
    logits = ndimage.gaussian_filter(rng.normal(size=(6, 10, 12, 9)), (0, 1.5, 1.5, 1.5)) * 40
    probs = np.exp(logits - logits.max(0)).astype(np.float32)
    probs /= probs.sum(0)
    probs[:, :3, :3, :3] = 0.5  # ties: the first class of equal maxima wins
    source = Grid(probs.shape[1:], oblique_affine(spacing=(2.0, 2.0, 2.0)))
    fine = Grid((26, 22, 28), oblique_affine(spacing=(0.9, 0.8, 1.1), degrees=35.0, origin=(-45.0, 8.0, 2.0)))
    coords = _mapped_centres(np.linalg.solve(source.affine, fine.affine), fine)
    shared = _shared_class(np.argmax(probs, 0), coords)
    assert 0.3 < (shared >= 0).mean() < 0.9  # both paths are taken
    prior = rng.integers(-1, 6, fine.shape)
    for fuse, w in ((None, 0.0), (prior, 0.3)):
        fast = argmax_resampled(probs, source, fine, chunk=4, prior=fuse, prior_weight=w)
        everywhere = _argmax_interpolated(probs, coords, 4, fuse, w)
        assert np.array_equal(fast, everywhere)
        assert len(np.unique(fast)) == 6 and (fast == 0).mean() > 0.1  # every class, and outside the source


def test_label_shares_hold_partial_volumes_and_sum_to_one():
    from napari_rrl_medsam.core.warp import label_shares

    labels = np.zeros((8, 8, 8), np.int16)
    labels[:3] = 5  # a boundary inside coarse voxel 1 (fine voxels 2 and 3)
    labels[:, :, 6:] = 9
    fine = Volume(labels, np.eye(4), kind="labels")
    same = label_shares(fine, [0, 5, 9], fine.grid)  # on its own grid: one-hot, in the given class order
    assert same.dtype == np.float16
    assert np.array_equal(np.array([0, 5, 9])[same.argmax(0)], labels) and set(np.unique(same)) == {0, 1}
    coarse = Grid((4, 4, 4), np.array([[2.0, 0, 0, 0.5], [0, 2, 0, 0.5], [0, 0, 2, 0.5], [0, 0, 0, 1]]))
    shares = label_shares(fine, [0, 5, 9], coarse).astype(np.float32)
    assert np.allclose(shares.sum(0), 1, atol=1e-3)
    assert shares[1, 0, 0, 0] == 1 and shares[1, 1, 0, 0] == pytest.approx(0.5)  # half of voxel 1 is label 5
    assert shares[2, 0, 0, 3] == 1 and shares[0, 2, 0, 0] == 1
    # through a field: the shares move as the nearest labels do
    shift = np.zeros((3, 4, 4, 4), np.float32)
    shift[0] = 2.0  # out(p) = labels(p + 2 mm): the boundary moves one coarse voxel down
    moved = label_shares(fine, [0, 5, 9], coarse, Field(shift, coarse)).astype(np.float32)
    assert moved[1, 0, 0, 0] == pytest.approx(0.5) and moved[1, 1, 0, 0] == 0
