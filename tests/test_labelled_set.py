"""A labelled set (issue 18, item 3): corrected volumes saved beside each other, never replacing a file."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import oblique_affine

from napari_rrl_medsam import api


def pair(value: int = 1):
    affine = oblique_affine()
    image = api.Volume(np.random.default_rng(value).random((6, 7, 8)).astype(np.float32), affine)
    labels = api.Volume(np.full((6, 7, 8), value, np.uint8), affine, kind="labels")
    return image, labels


def test_added_volumes_keep_their_grid_are_listed_and_form_a_task(tmp_path):
    image, labels = pair(1)
    written = api.add_labelled(tmp_path / "set", image, labels, "scan-07_fixed")
    assert [p.relative_to(tmp_path / "set").as_posix() for p in written] == [
        "images/scan-07_fixed.nii.gz",
        "labels/scan-07_fixed.nii.gz",
    ]
    back = api.load_volume(written[1], kind="labels")
    assert np.array_equal(back.array, labels.array) and np.allclose(back.affine, labels.affine)
    api.add_labelled(tmp_path / "set", *pair(2), "scan-02")
    assert [case.id for case in api.labelled_set(tmp_path / "set")] == ["scan-02", "scan-07_fixed"]
    api.save_volume(pair(4)[0], tmp_path / "set" / "images" / "new.nii.gz")  # an image without labels
    assert [case.id for case in api.labelled_set(tmp_path / "set")] == ["scan-02", "scan-07_fixed"]
    task = api.load_task(tmp_path / "set", atlas="scan-02")  # the layout a task folder has
    assert task.atlas.id == "scan-02" and [c.id for c in task.evaluation] == ["scan-07_fixed"]
    assert api.labelled_set(tmp_path / "nothing here") == []


def test_nothing_is_replaced_and_bad_input_is_refused_before_writing(tmp_path):
    image, labels = pair(1)
    api.add_labelled(tmp_path, image, labels, "a")
    before = (tmp_path / "labels" / "a.nii.gz").read_bytes()
    with pytest.raises(api.InputError, match="has a volume 'a'; choose another name"):
        api.add_labelled(tmp_path, *pair(3), "a")
    assert (tmp_path / "labels" / "a.nii.gz").read_bytes() == before
    with pytest.raises(api.InputError, match="cannot name a volume file"):
        api.add_labelled(tmp_path, image, labels, "../b")
    cropped = api.Volume(labels.array[:, :, :7].copy(), labels.affine, kind="labels")
    with pytest.raises(api.InputError, match="voxel grid"):
        api.add_labelled(tmp_path, image, cropped, "c")
    assert not (tmp_path / "images" / "c.nii.gz").exists()
