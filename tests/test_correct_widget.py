"""The correction widget in a real napari viewer (Xvfb): a box drawn on an axial slice paints its structure."""

from __future__ import annotations

import numpy as np
from test_prompting import Threshold, ball_volume

import napari_rrl_medsam.core.prompting as prompting
from napari_rrl_medsam.api import save_volume

PLUGIN = "napari-rrl-medsam"


def test_a_box_on_an_axial_slice_paints_its_structure_into_the_labels_layer(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    """NIfTI files opened by the plugin's reader (radiological world frame, LIA voxels, anisotropic spacing); the
    box is drawn in napari's world coordinates as a user would; the stand-in model marks the bright voxels in the
    box, so what lands in the layer checks every transform between the viewer and the volume; Ctrl+Z undoes it."""
    monkeypatch.setattr(prompting, "litemedsam_prompt_model", lambda device="cpu": Threshold())
    volume, ball = ball_volume()
    save_volume(volume, tmp_path / "ball.nii.gz")
    save_volume(volume.with_array(ball.astype(np.uint8), kind="labels"), tmp_path / "ball_truth_labels.nii.gz")
    save_volume(volume.with_array(np.zeros(ball.shape, np.uint8), kind="labels"), tmp_path / "ball_labels.nii.gz")
    viewer = make_napari_viewer()
    for name in ("ball", "ball_truth_labels", "ball_labels"):
        viewer.open(tmp_path / f"{name}.nii.gz", plugin=PLUGIN)
    image, truth, labels = (viewer.layers[n] for n in ("ball", "ball_truth_labels", "ball_labels"))
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Correct with box prompts")
    widget.form.image_layer.value, widget.form.labels_layer.value, widget.form.label_value.value = image, labels, 3
    widget.draw()
    boxes = viewer.layers["RRL-MedSAM boxes"]
    assert boxes.mode == "add_rectangle" and viewer.layers.selection.active is boxes
    assert np.allclose(boxes.scale, image.scale) and np.allclose(boxes.translate, image.translate)
    # world axes (inferior, posterior, left) mm: the ball's centre is at RAS (4, 2, 14)
    (x0, x1), (y0, y1), z = (-3.0, 11.0), (-5.0, 9.0), 14.0
    world = [[-z, -y0, -x0], [-z, -y0, -x1], [-z, -y1, -x1], [-z, -y1, -x0]]
    boxes.add_rectangles(np.array([boxes.world_to_data(corner) for corner in world]))  # placed like the image
    widget.apply()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    painted, expected = np.asarray(labels.data), np.asarray(truth.data) > 0
    assert set(np.unique(painted)) == {0, 3}
    overlap = 2 * ((painted == 3) & expected).sum() / ((painted == 3).sum() + expected.sum())
    assert overlap > 0.9, overlap
    assert "painted label 3" in widget.status.text()
    labels.undo()
    assert not np.asarray(labels.data).any()


def test_a_box_drawn_on_a_coronal_slice_is_refused_in_words(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    monkeypatch.setattr(prompting, "litemedsam_prompt_model", lambda device="cpu": Threshold())
    errors = []
    monkeypatch.setattr("napari_rrl_medsam._widgets.correct.show_error", errors.append)
    volume, _ = ball_volume()
    save_volume(volume, tmp_path / "ball.nii.gz")
    viewer = make_napari_viewer()
    viewer.open(tmp_path / "ball.nii.gz", plugin=PLUGIN)
    viewer.add_labels(np.zeros(viewer.layers["ball"].data.shape, np.uint8), name="new labels")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Correct with box prompts")
    widget.form.image_layer.value = viewer.layers["ball"]
    widget.form.labels_layer.value = viewer.layers["new labels"]
    widget.apply()
    assert errors and "no box yet" in errors[-1]
    widget.draw()
    y = -2.0  # a coronal plane: fixed posterior coordinate, the corners on different axial slices
    boxes = viewer.layers["RRL-MedSAM boxes"]
    world = [[-20, y, -11], [-20, y, 3], [-8, y, 3], [-8, y, -11]]
    boxes.add_rectangles(np.array([boxes.world_to_data(corner) for corner in world]))
    widget.apply()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert "draw the box on one axial slice" in widget.status.text()
