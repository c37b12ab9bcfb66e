"""The correction dock widget: box prompts with the SAM-family decoder (LiteMedSAM) paint one structure into a labels
layer, on the current axial slice and, with "propagate", the neighbouring slices. napari's own paint / fill /
erase tools do the rest; Ctrl+Z undoes a prompt like a brush stroke."""

from __future__ import annotations

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, LineEdit, PushButton, SpinBox
from napari.utils.notifications import show_error
from qtpy.QtWidgets import QLabel, QWidget

from .._writer import layer_affine
from .dskd import DEVICES
from .layers import (
    TRANSFORM_KEYS,
    FollowsLayers,
    image_volume,
    layer_choices,
    like_layer,
    scrolled_layout,
    to_volume,
)
from .settings import labelled_set_field, load_settings, path_or_none, save_settings
from .worker import RunsInWorker

BOXES = "RRL-MedSAM boxes"  # the Shapes layer the boxes are drawn in


def correction_form(v) -> Container:
    """The widget's fields: what to correct and how, and the labelled set."""
    s = load_settings()
    return Container(
        widgets=[
            ComboBox(
                name="image_layer",
                label="image",
                choices=layer_choices(v, "image"),
                tooltip="the volume the boxes are drawn on (its axial slices are segmented)",
            ),
            ComboBox(
                name="labels_layer",
                label="labels layer",
                choices=layer_choices(v, "labels", inputs=False),
                tooltip="the label map to correct (a result, or a new empty Labels layer): the box's structure "
                "is painted into it",
            ),
            SpinBox(
                name="label_value",
                label="label value",
                min=1,
                max=2**16 - 1,
                value=1,
                tooltip="the structure's label value (the labels layer's selected label is taken when it changes)",
            ),
            CheckBox(
                name="propagate",
                text="propagate to neighbouring slices",
                value=True,
                tooltip="carry the mask slice by slice (each prompted with the previous slice's mask box) until "
                "the structure ends; off: the box's slice only",
            ),
            ComboBox(
                name="device",
                label="device",
                choices=DEVICES,
                value=s.get("device", "auto"),
                tooltip="where LiteMedSAM runs: auto = a GPU when there is one",
            ),
            FileEdit(
                name="sam_checkpoint",
                label="SAM checkpoint",
                mode="r",
                nullable=True,
                value=s.get("correct.sam_checkpoint"),
                tooltip="optional: a SAM ViT-B checkpoint file (sam_vit_b_01ec64.pth, or a fine-tuned one such as "
                "MedSAM's medsam_vit_b.pth; 1024 px slices, slower); empty: LiteMedSAM, shipped with the plugin",
            ),
            PushButton(name="draw", text="Draw a box"),
            PushButton(name="apply", text="Segment the box"),
            labelled_set_field(
                "a folder collecting corrected volumes (images/ and labels/, NIfTI on each image's own grid); "
                "the inference widget's Register fuses them all, the training widget continues its model with them"
            ),
            LineEdit(
                name="volume_name",
                label="name in the set",
                tooltip="the file name for the image and its labels (default: the image layer's name); an "
                "existing one is never replaced",
            ),
            PushButton(name="add", text="Add to labelled set"),
        ]
    )


class CorrectWidget(QWidget, FollowsLayers, RunsInWorker):
    """Draw a box around a structure on an axial slice; LiteMedSAM segments it into the chosen labels layer."""

    title = "correction"
    ready_text = "draw a box around a structure on an axial slice, then Segment the box"

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = v = napari_viewer
        self.form = correction_form(v)
        self.labelled = QLabel("")
        self.labelled.setWordWrap(True)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout = scrolled_layout(self)
        layout.addWidget(self.form.native)
        layout.addWidget(self.status)
        layout.addWidget(self.labelled)
        layout.addStretch(1)
        self.form.draw.changed.connect(self.draw)
        self.form.apply.changed.connect(self.apply)
        self.form.add.changed.connect(self.add_to_set)
        self.form.labelled_set.changed.connect(self.show_set)
        self.form.image_layer.changed.connect(self._name_after_image)
        self._name_after_image(self.form.image_layer.value)
        self.show_set()
        self.form.labels_layer.changed.connect(self._follow_selected_label)
        self.follow_layers(v)
        self.worker = None
        self._prompter: tuple[tuple, object] | None = None  # ((image data, checkpoint), prompter): embeddings kept
        self.load_torch()

    def _name_after_image(self, layer=None) -> None:
        self.form.volume_name.value = layer.name.replace(" ", "_") if layer is not None else ""

    def _follow_selected_label(self, layer=None) -> None:
        if layer is not None:
            self.form.label_value.value = max(1, int(layer.selected_label))

    # --- actions ------------------------------------------------------------------------------------------
    def draw(self) -> None:
        """Select (or add) the boxes layer in rectangle mode, on top."""
        if BOXES not in self.viewer.layers:
            image = self.form.image_layer.value  # placed like the image: a box drawn on a slice is shown on it
            meta = {} if image is None else image.as_layer_data_tuple()[1]
            place = {key: meta[key] for key in TRANSFORM_KEYS if meta.get(key) is not None}
            self.viewer.add_shapes(
                name=BOXES, ndim=3, edge_color="yellow", face_color="transparent", edge_width=1, **place
            )
        boxes = self.viewer.layers[BOXES]
        self.viewer.layers.selection.active = boxes
        boxes.mode = "add_rectangle"
        self.status.setText("drag a rectangle around the structure on an axial slice, then Segment the box")

    def box_corners(self, image) -> list[list[float]]:
        """Two opposite corners of the newest box, in RAS millimetres through `image`'s placement."""
        if BOXES not in self.viewer.layers or not len(self.viewer.layers[BOXES].data):
            raise ValueError("no box yet: press Draw a box and drag a rectangle around the structure.")
        boxes = self.viewer.layers[BOXES]
        corners = np.asarray(boxes.data[-1])[[0, 2]]
        world = [boxes.data_to_world(c) for c in corners]
        data = np.array([image.world_to_data(w) for w in world])
        to_ras = layer_affine(image.as_layer_data_tuple()[1])
        return (data @ to_ras[:3, :3].T + to_ras[:3, 3]).tolist()

    def apply(self) -> None:
        """Segment the newest box's structure and paint it into the labels layer (undoable)."""
        image, labels, value = self.form.image_layer.value, self.form.labels_layer.value, self.form.label_value.value
        if image is None or labels is None:
            return show_error("segment the box: choose an image and a labels layer (a new one: Layers > New Labels).")
        try:
            corners = self.box_corners(image)
            checkpoint = self.form.sam_checkpoint.value
            key = (image.data, str(checkpoint))
            # same image, same model: same embeddings
            reuse = self._prompter is not None and self._prompter[0][0] is key[0] and self._prompter[0][1] == key[1]
            volume = None if reuse else image_volume(image, "image")
        except ValueError as exc:
            return show_error(f"segment the box: {exc}")
        propagate, device = self.form.propagate.value, self.form.device.value
        save_settings(**{"device": device, "correct.sam_checkpoint": path_or_none(checkpoint)})

        def work():
            from ..api import prompter

            if volume is not None:  # a new image or model: the previous one's embeddings are let go
                self._prompter = (key, prompter(volume, device, checkpoint))
            return self._prompter[1].segment(corners, propagate)

        def done(mask) -> None:
            array = like_layer(mask, labels, labels.name, "labels")[0] > 0
            labels.data_setitem(np.nonzero(array), value)
            self.status.setText(f"painted label {value} into {labels.name}: {int(array.sum())} voxels (Ctrl+Z undoes)")

        note = "" if reuse else " (a new image: each slice is embedded once)"
        self._run("segment the box", work, done, note)

    def add_to_set(self) -> None:
        """Save the image and the (corrected) labels layer into the labelled set folder: NIfTI on the image's own
        grid, atomic, never replacing a file."""
        from ..api import add_labelled

        image, labels, folder = self.form.image_layer.value, self.form.labels_layer.value, self.form.labelled_set.value
        if image is None or labels is None or folder is None:
            return show_error("add to labelled set: choose the image, its labels layer and the labelled set folder.")
        try:
            written = add_labelled(folder, image_volume(image, "image"), to_volume(labels), self.form.volume_name.value)
        except (ValueError, OSError) as exc:
            return show_error(f"add to labelled set: {exc}")
        save_settings(labelled_set=str(folder))
        self.status.setText(f"added {written[0].name} and its labels to {folder}")
        self.show_set()

    def show_set(self, _=None) -> None:
        """List the labelled set's volumes."""
        from ..api import labelled_set

        folder = self.form.labelled_set.value
        cases = labelled_set(folder) if folder else []
        self.labelled.setText(
            f"labelled set: {len(cases)} volume{'s' * (len(cases) != 1)}"
            + (": " + ", ".join(case.id for case in cases) if cases else "")
        )
