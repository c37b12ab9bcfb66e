import gzip

import nibabel as nib
import numpy as np
import pytest
import tifffile
from conftest import blobs, oblique_affine, write_nifti

from napari_rrl_medsam.api import InputError, Volume, load_volume, save_volume
from napari_rrl_medsam.core.io import read_grid


def test_nifti_round_trip_keeps_affine_data_and_kind(tmp_path, image_and_labels):
    image_path, labels_path = image_and_labels
    labels = load_volume(labels_path)
    assert labels.kind == "labels"  # integer data named like a label map
    out = save_volume(labels, tmp_path / "out" / "copy.nii.gz")
    back = nib.load(out)
    assert np.array_equal(back.affine, nib.load(labels_path).affine)
    assert back.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(back.dataobj), labels.array)
    assert back.header.get_intent()[0] == "label"
    # the intent, not the name, now marks it as labels
    renamed = tmp_path / "anything.nii.gz"
    out.rename(renamed)
    assert load_volume(renamed).kind == "labels"
    image = load_volume(image_path)
    assert image.kind == "image" and image.array.dtype == np.float32


def test_save_refuses_to_overwrite_and_leaves_no_temp_files(tmp_path):
    vol = Volume(np.zeros((4, 5, 6), np.float32), np.eye(4))
    path = save_volume(vol, tmp_path / "a.nii.gz")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_volume(vol, path)
    save_volume(vol.with_array(np.ones((4, 5, 6), np.float32)), path, overwrite=True)
    assert np.asarray(nib.load(path).dataobj).max() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["a.nii.gz"]


def test_tiff_spacing_from_imagej_and_ome(tmp_path):
    array = np.arange(4 * 5 * 6, dtype=np.uint16).reshape(4, 5, 6)
    ij = tmp_path / "ij.tif"
    tifffile.imwrite(ij, array, imagej=True, resolution=(1 / 0.5, 1 / 0.25), metadata={"spacing": 2.0, "unit": "um"})
    vol = load_volume(ij)
    assert np.allclose(vol.spacing, (2e-3, 0.25e-3, 0.5e-3))  # um -> mm, axes Z, Y, X
    assert np.array_equal(vol.array, array)
    ome = tmp_path / "ome.ome.tif"
    tifffile.imwrite(
        ome,
        array,
        photometric="minisblack",
        metadata={"axes": "ZYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.4, "PhysicalSizeZ": 1.5},
    )
    assert np.allclose(load_volume(ome).spacing, (1.5e-3, 0.4e-3, 0.3e-3))
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, array)
    assert load_volume(plain).spacing == (1.0, 1.0, 1.0)
    # our TIFF writer keeps the spacing
    out = save_volume(vol, tmp_path / "out.tif")
    assert np.allclose(load_volume(out).spacing, vol.spacing)


@pytest.mark.parametrize("shape, match", [((8, 9), "2D data"), ((8, 9, 1), "2D data"), ((8, 9, 10, 3), "4D data")])
def test_wrong_dimensions_are_named(tmp_path, shape, match):
    path = write_nifti(tmp_path / "x.nii.gz", np.zeros(shape, np.float32), np.eye(4))
    with pytest.raises(InputError, match=match):
        load_volume(path)
    with pytest.raises(InputError, match=match):
        read_grid(path)


def test_trailing_singleton_axis_is_dropped(tmp_path):
    path = write_nifti(tmp_path / "x.nii.gz", np.ones((8, 9, 10, 1), np.float32), np.eye(4))
    assert load_volume(path).shape == (8, 9, 10)


def test_nans_missing_unreadable_truncated(tmp_path):
    data = np.ones((8, 9, 10), np.float32)
    data[1, 2, 3] = np.nan
    with pytest.raises(InputError, match="1 NaN"):
        load_volume(write_nifti(tmp_path / "nan.nii.gz", data, np.eye(4)))
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_volume(tmp_path / "missing.nii.gz")
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(gzip.compress(b"this is not a nifti file" * 20))
    with pytest.raises(InputError, match="cannot read .*junk.nii.gz"):
        load_volume(junk)
    good = write_nifti(tmp_path / "good.nii.gz", np.random.default_rng(0).random((20, 20, 20), np.float32), np.eye(4))
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_volume(truncated)
    with pytest.raises(InputError, match="unsupported file type"):
        load_volume(_touch(tmp_path / "a.png"))


def _touch(path):
    path.write_bytes(b"x")
    return path


def test_labels_written_from_int64_use_a_small_type(tmp_path):
    vol = Volume(blobs().astype(np.int64), oblique_affine(), kind="labels")
    out = save_volume(vol, tmp_path / "l.nii")
    assert nib.load(out).get_data_dtype() == np.uint8
    assert np.array_equal(load_volume(out).array, vol.array)
