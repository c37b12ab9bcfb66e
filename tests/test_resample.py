import numpy as np
import pytest
from conftest import blobs, oblique_affine

from napari_rrl_medsam.api import Grid, InputError, Volume, normalise_intensity, resample, to_working, working_grid
from napari_rrl_medsam.core.resample import reorient_canonical, same_voxels


def lia(spacing: float, shape) -> np.ndarray:
    affine = np.array([[-spacing, 0, 0, 50.0], [0, 0, spacing, -60.0], [0, -spacing, 0, 70.0], [0, 0, 0, 1]])
    return affine


def dice(a, b, label):
    a, b = a == label, b == label
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_working_grid_is_ras_isotropic_and_covers_the_field_of_view():
    grid = working_grid(Grid((160, 192, 224), lia(1.0, None)), spacing=2.0)
    # LIA 160 x 192 x 224 at 1 mm -> RAS 80 x 112 x 96 at 2 mm, same field of view
    assert grid.shape == (80, 112, 96)
    assert np.allclose(grid.affine[:3, :3], 2 * np.eye(3))
    with pytest.raises(InputError, match="positive"):
        working_grid(grid, spacing=0)


def test_reorientation_round_trip_is_exact_for_labels_and_images():
    labels = Volume(blobs((16, 20, 24)), lia(2.0, None), kind="labels")
    image = labels.with_array(np.random.default_rng(0).random(labels.shape).astype(np.float32), kind="image")
    for vol in (labels, image):
        work = to_working(vol, spacing=2.0)  # pure reorientation: same voxels
        assert same_voxels(vol.grid, work.grid)
        back = resample(work, vol.grid)
        assert back.array.dtype == vol.array.dtype
        assert np.array_equal(back.array, vol.array)
        assert np.array_equal(back.affine, vol.affine)
        assert np.array_equal(reorient_canonical(vol).array, work.array)


def test_labels_to_coarser_working_grid_and_back_restore_native_grid():
    labels = Volume(
        np.kron(blobs((12, 14, 16)), np.ones((2, 2, 2), np.uint8)), oblique_affine((1.0, 1.0, 1.0)), kind="labels"
    )
    work = to_working(labels, spacing=2.0)
    assert work.array.dtype == labels.array.dtype
    back = resample(work, labels.grid)
    assert back.shape == labels.shape and np.array_equal(back.affine, labels.affine)
    assert set(np.unique(back.array)) <= set(np.unique(labels.array))  # nearest neighbour: no new values
    for value in (1, 2, 5):
        assert dice(back.array, labels.array, value) > 0.6


def test_images_are_interpolated_linearly_and_identity_is_exact():
    ramp = np.tile(np.arange(8, dtype=np.float32)[:, None, None], (1, 4, 4))
    vol = Volume(ramp, np.eye(4))
    half = Grid((15, 4, 4), np.diag([0.5, 1, 1, 1]))
    out = resample(vol, half)
    assert np.allclose(out.array[:, 1, 1], np.arange(15) * 0.5, atol=1e-6)
    assert np.array_equal(resample(vol, vol.grid).array, ramp)


def test_normalise_intensity_clips_outliers():
    data = np.linspace(0, 100, 1000).astype(np.float32)
    data[0], data[-1] = -1e6, 1e6
    out = normalise_intensity(data, 1, 99)
    assert out.min() == 0 and out.max() == 1 and out.dtype == np.float32
    assert 0.4 < out[500] < 0.6
    assert not normalise_intensity(np.ones(10)).any()


def test_linear_label_interpolation_beats_nearest_neighbour_on_round_trips():
    from napari_rrl_medsam.core.volume import Grid as G

    grid = np.indices((24, 28, 32)).transpose(1, 2, 3, 0)
    balls = np.zeros((24, 28, 32), np.uint8)
    for value, centre, radius in ((1, (8, 9, 10), 6.5), (2, (16, 18, 20), 5.2), (5, (16, 8, 24), 3.7)):
        balls[np.linalg.norm(grid - centre, axis=-1) <= radius] = value
    native = Volume(balls, np.eye(4), kind="labels")
    coarse = G((12, 14, 16), np.diag([2.0, 2.0, 2.0, 1.0]))
    scores = {}
    for order in (0, 1):
        back = resample(resample(native, coarse, order), native.grid, order)
        assert back.array.dtype == native.array.dtype
        assert set(np.unique(back.array)) <= set(np.unique(native.array))
        scores[order] = np.mean([dice(back.array, native.array, v) for v in (1, 2, 5)])
    assert scores[1] > scores[0]


def test_foreground_is_the_anatomy_with_its_dark_inside_and_without_specks_of_noise():
    from napari_rrl_medsam.core.resample import foreground

    image = np.zeros((40, 40, 40), np.float32)
    r = np.sqrt(((np.indices(image.shape) - 20) ** 2).sum(0))
    image[r < 12] = 1.0
    image[r < 4] = 0.0  # a dark ventricle inside
    image[2, 2, 2] = 1.0  # a speck of noise in the air
    mask = foreground(image, margin=0)
    assert mask[r < 11.5].all() and mask[20, 20, 20]  # the dark inside is anatomy
    assert not mask[2, 2, 2] and not mask[r > 12.5].any()
    grown = foreground(image, margin=2)
    assert grown[r < 12.9].all() and not grown[r > 14.5].any()  # a margin all round
