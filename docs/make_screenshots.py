"""The README's screenshots of the dock widgets and the few-shot loop, from a real viewer on the bundled sample.

    xvfb-run -a python docs/make_screenshots.py            # writes docs/images/widget_*.png (a few minutes on CPU)

Each widget does real (short) work first: a small DSKD run from the LiteMedSAM teacher, a short registration +
co-training run, then registration, segmentation and evaluation of target03 with the model just trained (only
8 co-training steps: its segmentation is not useful yet, so the screenshot scores and shows the pseudo labels),
then a box around the left thalamus of target03 that LiteMedSAM segments and propagates, painted into target03's
pseudo labels, which join a labelled set; last, the training run continued with that labelled set.
Settings and caches go to a temporary folder.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

OUT = Path(__file__).parent / "images"


def wait(widget) -> None:
    """Run the Qt event loop until the widget's worker is done."""
    from qtpy.QtWidgets import QApplication

    while widget.worker is not None:
        QApplication.processEvents()
        widget.thread().msleep(20)
    if getattr(widget, "failed", None) is not None:
        raise widget.failed


def save(viewer, name: str) -> None:
    """Screenshot of the whole window (without notification toasts), stored as a small palette PNG."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    QApplication.processEvents()

    shot = viewer.screenshot(canvas_only=False, flash=False)
    image = Image.fromarray(shot[..., :3]).quantize(colors=128, dither=Image.Dither.NONE)
    path = OUT / f"{name}.png"
    image.save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    os.environ["RRL_MEDSAM_CONFIG_DIR"], os.environ["RRL_MEDSAM_CACHE"] = str(tmp / "config"), str(tmp / "cache")
    import napari
    from qtpy.QtWidgets import QApplication, QScrollArea

    OUT.mkdir(exist_ok=True)
    viewer = napari.Viewer()
    viewer.window._qt_window.resize(1280, 800)
    viewer.open_sample("napari-rrl-medsam", "oneshot_brain")
    for name in ("target01", "target02", "target03"):
        viewer.layers[name].visible = False
    plugin = "napari-rrl-medsam"

    # 1. DSKD: a small run from the bundled LiteMedSAM teacher (a real run is 600 + 600 steps)
    dock, dskd = viewer.window.add_plugin_dock_widget(plugin, "Encoder distillation (DSKD)")
    f = dskd.form
    f.volumes.value = [viewer.layers["target01"]]
    f.natural_steps.value, f.medical_steps.value, f.batch_size.value = 8, 8, 4
    f.device.value, f.out.value = "cpu", str(tmp / "encoder.pt")
    dskd.advanced = {"slices_per_volume": 4, "checkpoint_every": 4}
    dskd.start()
    wait(dskd)
    save(viewer, "widget_dskd")
    viewer.window.remove_dock_widget(dock)
    viewer.layers.remove("DSKD: student embedding (a slice)")

    # 2. One-shot training with the shipped encoder: registration, then co-training, live layers
    dock, train = viewer.window.add_plugin_dock_widget(plugin, "One-shot training")
    f = train.form
    f.atlas.value, f.atlas_labels.value = viewer.layers["atlas"], viewer.layers["atlas labels"]
    f.unlabelled.value = [viewer.layers["target01"], viewer.layers["target02"]]
    f.encoder.value, f.device.value, f.out.value = None, "cpu", str(tmp / "run")
    f.registration_steps.value, f.cotrain_steps.value, f.slab.value, f.image_size.value = 30, 8, 8, 64
    train.registration_settings = {"preview_every": 5, "checkpoint_every": 10}
    train.cotrain_settings = {"preview_every": 4, "checkpoint_every": 4}
    train.start()
    wait(train)
    for layer in viewer.layers:  # the pseudo labels on the current volume (8 co-training steps segment poorly)
        layer.visible = layer.name in ("live: current volume", "live: pseudo labels")
    bar = train.findChild(QScrollArea).verticalScrollBar()  # the form scrolls: show the buttons and the plot
    bar.setValue(bar.maximum())
    save(viewer, "widget_training")
    viewer.window.remove_dock_widget(dock)
    for layer in [layer for layer in viewer.layers if layer.name.startswith("live:")]:
        viewer.layers.remove(layer)

    # 3. Inference: register and segment target03 with that model, evaluate against its labels
    viewer.layers["target03"].visible = True
    dock, infer = viewer.window.add_plugin_dock_widget(plugin, "Register and segment")
    f = infer.form
    f.model.value, f.device.value = str(tmp / "run" / "rrl_medsam.pt"), "cpu"  # the co-trained model also registers
    f.atlas.value, f.atlas_labels.value = viewer.layers["atlas"], viewer.layers["atlas labels"]
    f.target.value = viewer.layers["target03"]
    f.register.changed.emit(True)
    wait(infer)
    f.segment.changed.emit(True)
    wait(infer)
    QApplication.processEvents()
    f.prediction.value, f.truth.value = viewer.layers["target03 pseudo labels"], viewer.layers["target03 labels"]
    f.evaluate.changed.emit(True)
    wait(infer)
    for layer in viewer.layers:
        layer.visible = layer.name in ("target03", "target03 pseudo labels")  # the labels over their image
    save(viewer, "widget_inference")
    viewer.window.remove_dock_widget(dock)

    # 4. Correction: a box around the left thalamus on its largest axial slice, LiteMedSAM propagates it
    truth = viewer.layers["target03 labels"]
    thalamus = np.asarray(truth.data) == 10
    z = int(np.argmax(thalamus.sum(axis=(1, 2))))  # data axis 0 is the world's inferior axis: axial slices
    rows, cols = np.nonzero(thalamus[z])
    r0, r1, c0, c1 = rows.min() - 3, rows.max() + 3, cols.min() - 3, cols.max() + 3
    corners = [truth.data_to_world((z, r, c)) for r, c in ((r0, c0), (r0, c1), (r1, c1), (r1, c0))]
    corrections = viewer.add_labels(np.zeros_like(np.asarray(truth.data)), name="target03 corrections")
    for key in ("scale", "translate", "affine", "axis_labels", "units"):
        setattr(corrections, key, getattr(truth, key))
    corrections.metadata = dict(truth.metadata)
    dock, correct = viewer.window.add_plugin_dock_widget(plugin, "Correct with box prompts")
    f = correct.form
    f.image_layer.value, f.labels_layer.value, f.label_value.value = viewer.layers["target03"], corrections, 10
    f.device.value, f.labelled_set.value = "cpu", str(tmp / "labelled")
    correct.draw()
    viewer.dims.set_point(0, corners[0][0])
    corners = [(viewer.dims.point[0], *corner[1:]) for corner in corners]  # on the displayed slice, as drawn
    boxes = viewer.layers["RRL-MedSAM boxes"]
    boxes.add_rectangles(np.array([boxes.world_to_data(corner) for corner in corners]))
    correct.apply()
    wait(correct)
    # the corrected result joins the labelled set: the pseudo labels with the thalamus LiteMedSAM found painted in
    pseudo = viewer.layers["target03 pseudo labels"]
    pseudo.data_setitem(np.nonzero(np.asarray(corrections.data) == 10), 10)
    f.labels_layer.value = pseudo
    f.add.changed.emit(True)
    f.labels_layer.value = corrections
    for layer in viewer.layers:
        layer.visible = layer.name in ("target03", "target03 corrections", "RRL-MedSAM boxes")
    save(viewer, "widget_correct")
    viewer.window.remove_dock_widget(dock)

    # 5. The few-shot loop: the finished run continued with the labelled set (the corrected target03)
    dock, train = viewer.window.add_plugin_dock_widget(plugin, "One-shot training")
    f = train.form
    f.atlas.value, f.atlas_labels.value = viewer.layers["atlas"], viewer.layers["atlas labels"]
    f.unlabelled.value = [viewer.layers["target01"], viewer.layers["target02"], viewer.layers["target03"]]
    f.encoder.value, f.device.value, f.out.value = None, "cpu", str(tmp / "run")
    f.registration_steps.value, f.cotrain_steps.value, f.slab.value, f.image_size.value = 30, 8, 8, 64
    f.labelled_set.value = str(tmp / "labelled")
    f.val_image.value = f.val_labels.value = None  # target03, the default, is in the labelled set now
    train.registration_settings = {"preview_every": 5, "checkpoint_every": 10}
    train.cotrain_settings = {"preview_every": 4, "checkpoint_every": 4}
    train.buttons["Continue training"].click()
    wait(train)
    for layer in viewer.layers:
        layer.visible = layer.name in ("live: current volume", "live: pseudo labels")
    bar = train.findChild(QScrollArea).verticalScrollBar()
    bar.setValue(bar.maximum() // 2)  # the labelled set, the output folder it moved to, the buttons
    save(viewer, "widget_continue")
    viewer.close()


if __name__ == "__main__":
    sys.exit(main())
