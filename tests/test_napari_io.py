"""The napari reader and writer through npe2 (no GUI): geometry survives bit for bit."""

import nibabel as nib
import npe2
import numpy as np
import pytest
from conftest import blobs, oblique_affine, write_nifti
from napari.layers import Layer

from napari_rrl_medsam._reader import WORLD_FROM_RAS

PLUGIN = "napari-rrl-medsam"


@pytest.fixture(autouse=True, scope="module")
def discovered_plugins():
    """What napari does at start-up: find installed plugins through their `napari.manifest` entry point."""
    npe2.PluginManager.instance().discover()


def read_layers(path):
    return [Layer.create(*t) for t in npe2.read([str(path)], stack=False, plugin_name=PLUGIN)]


def write_layer(layer, path):
    return npe2.write(str(path), [layer.as_layer_data_tuple()], plugin_name=PLUGIN)


@pytest.mark.parametrize("kind", ["labels", "image"])
def test_oblique_nifti_round_trip_is_bit_for_bit(tmp_path, kind):
    data = blobs() if kind == "labels" else np.random.default_rng(0).normal(size=blobs().shape).astype(np.float32)
    src = write_nifti(tmp_path / f"scan_{kind}.nii.gz", data, oblique_affine(), "label" if kind == "labels" else None)
    (layer,) = read_layers(src)
    assert layer._type_string == kind
    assert layer.metadata["source_shape"] == data.shape
    # the layer places voxels where the file says: world position of a voxel = file affine @ index
    index = np.array([3, 5, 7])
    napari_world = layer.data_to_world(_layer_index(src, index))
    assert np.allclose(napari_world, (WORLD_FROM_RAS @ oblique_affine() @ [*index, 1])[:3], atol=1e-4)
    (out,) = write_layer(layer, tmp_path / f"out_{kind}.nii.gz")
    back, original = nib.load(out), nib.load(src)
    assert np.array_equal(back.affine, original.affine)
    assert back.get_data_dtype() == original.get_data_dtype()
    assert np.array_equal(np.asarray(back.dataobj), np.asarray(original.dataobj))


def _layer_index(path, index):
    """Where voxel `index` of the file sits in the layer data: reoriented to RAS, then laid out along the world axes
    (inferior, posterior, left), i.e. RAS index (i, j, k) -> (nz - 1 - k, ny - 1 - j, nx - 1 - i)."""
    import nibabel.orientations as nio

    affine = nib.load(path).affine
    ornt = nio.io_orientation(affine)
    shape = nib.load(path).shape
    to_canon = np.linalg.inv(nio.inv_ornt_aff(ornt, shape))
    i, j, k = (to_canon @ [*index, 1])[:3]
    canon_shape = [0, 0, 0]
    for axis, (out, _) in enumerate(ornt):
        canon_shape[int(out)] = shape[axis]
    nx, ny, nz = canon_shape
    return np.array([nz - 1 - k, ny - 1 - j, nx - 1 - i])


def test_axis_aligned_file_gives_scale_and_translate(tmp_path):
    affine = np.diag([0.5, 0.75, 2.0, 1.0])
    affine[:3, 3] = (10, -20, 30)
    src = write_nifti(tmp_path / "ct.nii.gz", np.ones((6, 7, 8), np.int16), affine)
    (layer,) = read_layers(src)
    # world axes (inferior, posterior, left): the last voxel's corner, (12.5, -15.5, 44) mm RAS, is the origin
    assert np.allclose(layer.scale, (2.0, 0.75, 0.5)) and np.allclose(layer.translate, (-44, 15.5, -12.5))
    assert np.allclose(layer.affine.affine_matrix, np.eye(4))
    assert tuple(layer.axis_labels) == ("inferior", "posterior", "left") and all(
        str(u) == "millimeter" for u in layer.units
    )


def test_volumes_open_as_radiologists_read_them(tmp_path):
    """Axial first, anterior at the top, the patient's right on the screen's left, superior up in other views."""
    data = np.zeros((10, 12, 14), np.int16)  # RAS file: x to the right, y anterior, z superior
    data[9, 6, 7], data[5, 11, 7], data[5, 6, 13] = 1, 2, 3  # right-most, anterior-most, superior-most voxels
    (layer,) = read_layers(write_nifti(tmp_path / "ras_seg.nii.gz", data, np.eye(4), "label"))
    where = {v: np.argwhere(layer.data == v)[0] for v in (1, 2, 3)}
    assert layer.data.shape == (14, 12, 10)  # the slider (first axis) runs through axial slices
    assert where[2][1] == 0  # anterior: the top row of an axial slice (rows grow downwards)
    assert where[1][2] == 0  # the patient's right: the left column (radiological convention)
    assert where[3][0] == 0  # superior: the top row of a coronal or sagittal view


def test_edited_layer_is_written_in_the_layer_geometry(tmp_path):
    src = write_nifti(tmp_path / "a_seg.nii.gz", blobs(), np.diag([2.0, 2.0, 2.0, 1.0]))
    (layer,) = read_layers(src)
    layer.scale = (1.0, 1.0, 1.0)  # the user changed the geometry on purpose
    (out,) = write_layer(layer, tmp_path / "edited.nii.gz")
    # each voxel is written where the layer now shows it: data -> napari world -> RAS mm
    world = np.diag([1.0, 1.0, 1.0, 1.0])
    world[:3, 3] = layer.translate
    assert np.allclose(nib.load(out).affine, WORLD_FROM_RAS @ world)
    assert np.array_equal(np.asarray(nib.load(out).dataobj), layer.data)


def test_tiff_opens_with_spacing(tmp_path):
    import tifffile

    tifffile.imwrite(
        tmp_path / "cells.tif",
        np.zeros((5, 6, 7), np.uint8),
        imagej=True,
        resolution=(1 / 0.2, 1 / 0.2),
        metadata={"spacing": 0.5, "unit": "um"},
    )
    (layer,) = read_layers(tmp_path / "cells.tif")
    assert np.allclose(layer.scale, (0.5e-3, 0.2e-3, 0.2e-3))


def test_writer_rejects_2d_layers(tmp_path):
    from napari.layers import Labels

    with pytest.raises(Exception, match="needs a 3D layer"):
        write_layer(Labels(np.zeros((4, 4), np.uint8)), tmp_path / "flat.nii.gz")


def test_sample_data_contribution():
    layers = [
        Layer.create(*t) for t in npe2.PluginManager.instance().get_manifest(PLUGIN).contributions.sample_data[0].exec()
    ]
    names = ["atlas", "target01", "target02", "target03", "atlas labels", "target03 labels"]
    assert [layer.name for layer in layers] == names
    assert [layer._type_string for layer in layers] == ["image"] * 4 + ["labels"] * 2
    for layer in layers:
        assert np.allclose(layer.scale, 1.5)
    # target02 is stored LIA: the reader reorients it so it overlays the others
    assert layers[2].data.shape == layers[1].data.shape


def test_manifest_is_one_file_and_validates():
    from pathlib import Path

    import napari_rrl_medsam

    packaged = Path(napari_rrl_medsam.__file__).parent / "napari.yaml"
    top = Path(__file__).parents[1] / "napari.yaml"
    assert top.resolve() == packaged.resolve()  # a link, not a second copy
    manifest = npe2.PluginManifest.from_distribution(PLUGIN)
    manifest.validate_imports()
    contributions = manifest.contributions
    assert contributions.readers and len(contributions.writers) == 2 and contributions.sample_data


def test_bundled_sample_matches_its_generator():
    from napari_rrl_medsam.api import load_volume
    from napari_rrl_medsam.data.sample import SAMPLE_DIR, SUBJECTS, subject_volumes

    for case_id in SUBJECTS:
        image, labels = subject_volumes(case_id)
        for generated, sub in ((image, "images"), (labels, "labels")):
            shipped = load_volume(SAMPLE_DIR / sub / f"{case_id}.nii.gz")
            assert np.array_equal(shipped.array, generated.array)
            assert np.allclose(shipped.affine, generated.affine, atol=1e-6)
