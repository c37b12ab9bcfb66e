import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_hausdorff_distance

from napari_rrl_medsam.api import InputError, Volume, evaluate, save_volume


def sphere(shape, centre, radius):
    grid = np.indices(shape).transpose(1, 2, 3, 0)
    return np.linalg.norm(grid - np.array(centre), axis=-1) <= radius


def test_dice_of_known_overlap():
    truth = np.zeros((10, 10, 10), np.uint8)
    pred = np.zeros_like(truth)
    truth[2:6, 2:6, 2:6] = 1  # 64 voxels
    pred[2:6, 2:6, 4:8] = 1  # 64 voxels, 32 shared
    truth[7:9, 7:9, 7:9] = 3  # 8 voxels, perfectly predicted
    pred[7:9, 7:9, 7:9] = 3
    report = evaluate(Volume(pred, np.eye(4)), Volume(truth, np.eye(4)), hd95=False)
    assert report.labels == [1, 3]
    assert report.dice[1] == pytest.approx(0.5)
    assert report.dice[3] == pytest.approx(1.0)
    assert report.mean_dice == pytest.approx(0.75)


def test_hd95_in_mm_equals_monai_on_the_full_volume():
    shape = (40, 40, 40)
    truth = sphere(shape, (20, 20, 20), 8).astype(np.uint8)
    pred = sphere(shape, (20, 20, 22), 8).astype(np.uint8)  # shifted by 2 voxels along the last axis
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    report = evaluate(Volume(pred, affine), Volume(truth, affine))
    full = compute_hausdorff_distance(
        torch.from_numpy(pred.astype(bool))[None, None],
        torch.from_numpy(truth.astype(bool))[None, None],
        percentile=95,
        spacing=[1.5, 1.5, 2.0],
    )
    assert report.hd95[1] == pytest.approx(float(full[0, 0]), abs=1e-6)  # cropping changes nothing
    assert 2.0 <= report.hd95[1] <= 4.0  # about the 2-voxel (4 mm) shift


def test_absent_structures_and_missed_structures():
    truth = np.zeros((8, 8, 8), np.uint8)
    truth[1:4, 1:4, 1:4] = 2
    pred = np.zeros_like(truth)
    report = evaluate(pred, truth, labels=[2, 7])
    assert report.dice[2] == 0.0 and report.hd95[2] == pytest.approx(np.sqrt(3 * 8**2))  # the diagonal
    assert report.missed == [2] and "missed" in report.table()
    assert math.isnan(report.dice[7])  # in neither: left out of the mean
    assert report.mean_dice == 0.0 and report.mean_hd95 == report.hd95[2]  # a miss stays in the mean
    # a miss never scores better than a poor hit: missing a structure must not pay
    poor = pred.copy()
    poor[7, 7, 7] = 2
    assert evaluate(poor, truth, labels=[2]).mean_hd95 < report.mean_hd95


def test_what_is_not_a_label_map_is_refused():
    truth = np.zeros((8, 8, 8), np.uint8)
    truth[1:4, 1:4, 1:4] = 2
    image = truth * 0.37 + 0.1  # an intensity image
    with pytest.raises(InputError, match="prediction has non-integer values"):
        evaluate(image, truth)
    with pytest.raises(InputError, match="negative"):
        evaluate(truth, -truth.astype(np.int16))
    with pytest.raises(InputError, match="no labelled voxel"):
        evaluate(truth, np.zeros_like(truth))


def test_evaluate_paths_and_csv(tmp_path):
    truth = np.zeros((8, 8, 8), np.uint8)
    truth[1:4, 1:4, 1:4] = 1
    t = save_volume(Volume(truth, np.eye(4), "labels"), tmp_path / "t.nii.gz")
    p = save_volume(Volume(truth, np.eye(4), "labels"), tmp_path / "p.nii.gz")
    report = evaluate(p, t)
    assert report.dice == {1: 1.0} and report.hd95 == {1: 0.0}
    rows = report.to_csv(tmp_path / "r.csv").read_text().splitlines()
    assert rows[0] == "label,name,dice,hd95_mm,missed" and rows[1].startswith("1,,1.0,0.0")
    assert "mean" in report.table()


def test_grid_mismatch_is_an_error():
    a = Volume(np.ones((4, 4, 4), np.uint8), np.eye(4))
    with pytest.raises(InputError, match="prediction shape"):
        evaluate(Volume(np.ones((4, 4, 5), np.uint8), np.eye(4)), a)
    with pytest.raises(InputError, match="different affines"):
        evaluate(Volume(np.ones((4, 4, 4), np.uint8), np.diag([2, 2, 2, 1.0])), a)
