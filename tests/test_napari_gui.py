"""In a real napari viewer (Xvfb): the sample and the reader/writer as a user meets them."""

import nibabel as nib
import numpy as np
from conftest import blobs, oblique_affine, write_nifti

PLUGIN = "napari-rrl-medsam"


def test_sample_data_opens_with_physical_scale(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "oneshot_brain")
    names = ["atlas", "target01", "target02", "target03", "atlas labels", "target03 labels"]
    assert [layer.name for layer in viewer.layers] == names  # labels above the images, readable
    assert [layer._type_string for layer in viewer.layers][-2:] == ["labels", "labels"]  # the evaluation truth too
    for layer in viewer.layers:
        assert np.allclose(layer.scale, (1.5, 1.5, 1.5))
        # every volume spans the same 144 x 168 x 144 mm box centred on the world origin
        extent = layer.extent.world
        assert np.allclose(extent[1] - extent[0] + 1.5, (144, 168, 144))
        assert np.allclose(extent.mean(axis=0), 0, atol=1e-6)
    # the atlas's labels overlay its image voxel for voxel
    assert viewer.layers["atlas labels"].data.shape == viewer.layers["atlas"].data.shape
    # the viewer's world dimensions are millimetres: the middle slice is at the origin
    assert np.allclose(viewer.dims.point, 0, atol=1.5)
    # axial slices first, the axes named for what grows along them (anterior up, the patient's right on the left)
    assert tuple(viewer.dims.axis_labels) == ("inferior", "posterior", "left") and viewer.dims.displayed == (1, 2)
    shot = viewer.screenshot(tmp_path / "sample.png", canvas_only=False)
    assert shot[..., :3].std() > 5  # real pixels, not a blank canvas


def test_open_and_save_an_oblique_scan_in_the_viewer(make_napari_viewer, tmp_path):
    src = write_nifti(tmp_path / "oblique_seg.nii.gz", blobs(), oblique_affine(), "label")
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(src), plugin=PLUGIN)
    assert layer._type_string == "labels"
    layer.data[layer.data == 5] = 7  # an edit, as a user would paint
    out = tmp_path / "saved.nii.gz"
    viewer.layers.save(str(out), selected=False, plugin=PLUGIN)
    saved = nib.load(out)
    assert np.array_equal(saved.affine, nib.load(src).affine)
    expected = blobs()
    expected[expected == 5] = 7
    assert np.array_equal(np.asarray(saved.dataobj), expected)
