"""The inference dock widget: register the atlas onto a target, segment it, and score a result."""

from __future__ import annotations

import json
import math
from pathlib import Path

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, PushButton, SpinBox
from napari.utils.notifications import show_error
from qtpy.QtWidgets import QFileDialog, QHeaderView, QLabel, QTableWidget, QTableWidgetItem, QWidget

from .dskd import DEVICES
from .layers import (
    FollowsLayers,
    field_value,
    image_volume,
    is_kind,
    layer_choices,
    like_layer,
    named,
    role,
    scrolled_layout,
    show_only,
    to_volume,
    upsert,
)
from .settings import labelled_set_field, load_settings, path_or_none, save_settings
from .worker import RunsInWorker


class InferenceWidget(QWidget, FollowsLayers, RunsInWorker):
    """Register / Segment with a trained model; Evaluate a labels layer against ground truth (Dice, HD95)."""

    title = "inference"

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        from ..api import PRIOR_WEIGHT, REFINE_STEPS

        self.viewer = napari_viewer
        s = load_settings()
        v = napari_viewer
        self.form = None
        atlas, atlas_labels = (
            (lambda: [field_value(self.form, "atlas")]),
            (lambda: [field_value(self.form, "atlas_labels")]),
        )
        self.form = Container(
            widgets=[
                FileEdit(
                    name="model",
                    label="model",
                    mode="r",
                    filter="*.pt",
                    nullable=True,
                    value=s.get("inference.model"),
                    tooltip="a trained model: rrl_medsam.pt (co-trained: registers and segments) or registration.pt "
                    "(registers only), from the one-shot training widget's output folder",
                ),
                ComboBox(
                    name="device",
                    label="device",
                    choices=DEVICES,
                    value=s.get("device", "auto"),
                    tooltip="where the network runs: auto = a GPU when there is one, else the CPU",
                ),
                ComboBox(
                    name="atlas",
                    label="atlas image",
                    choices=layer_choices(v, "image", prefer=named("atlas")),
                    tooltip="the labelled volume the model was trained with",
                ),
                ComboBox(
                    name="atlas_labels",
                    label="atlas labels",
                    choices=layer_choices(v, "labels", prefer=named("atlas")),
                    tooltip="the atlas's label map",
                ),
                ComboBox(
                    name="target",
                    label="target image",
                    choices=layer_choices(v, "image", exclude=atlas),
                    tooltip="the volume to register the atlas onto and to segment",
                ),
                labelled_set_field(
                    "optional: a folder of further labelled volumes (the correction widget's 'Add to "
                    "labelled set'): Register then registers each of them too and fuses all their labels, each "
                    "vote weighted by local image similarity (about 0.03 mean Dice per added volume, measured); "
                    "Segment with the registration prior fuses those labels into its prior. Propagated atlases "
                    "('rrl-medsam propagate': the model's labels of its unlabelled volumes) work the same way"
                ),
                SpinBox(
                    name="refine_steps",
                    label="refine steps",
                    min=0,
                    max=1000,
                    value=REFINE_STEPS,
                    tooltip="instance optimisation of the registration on this pair: slower, more accurate "
                    f"({REFINE_STEPS} take about 2 s on a brain; 0: the network alone)",
                ),
                PushButton(name="register", text="Register"),
                CheckBox(
                    name="prior",
                    text="registration prior",
                    value=False,
                    tooltip="Segment also registers the atlas above and fuses its labels with the network's "
                    f"(weight {PRIOR_WEIGHT}): more accurate, slower",
                ),
                CheckBox(
                    name="mirror",
                    text="mirror left / right (FreeSurfer labels)",
                    value=False,
                    tooltip="Segment also segments the left-right mirror image and averages, FreeSurfer's left "
                    "and right labels exchanged: for brains labelled like aseg; twice the network's time",
                ),
                PushButton(name="segment", text="Segment"),
                ComboBox(
                    name="prediction",
                    label="prediction",
                    choices=layer_choices(v, "labels", inputs=False, prefer=lambda layer: role(layer) == "result"),
                    tooltip="the label map to score: by default the newest result (Register's pseudo labels or "
                    "Segment's labels)",
                ),
                ComboBox(
                    name="truth",
                    label="ground truth",
                    choices=layer_choices(v, "labels", prefer=lambda layer: layer not in atlas_labels()),
                    tooltip="the true label map of the same volume (never a result layer)",
                ),
                PushButton(name="evaluate", text="Evaluate"),
            ]
        )
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["label", "structure", "Dice", "HD95 mm"])
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()  # every column in view: the names take what the numbers leave
        for column, mode in enumerate(("ResizeToContents", "Stretch", "ResizeToContents", "ResizeToContents")):
            header.setSectionResizeMode(column, getattr(QHeaderView.ResizeMode, mode))
        self.table.setMinimumHeight(220)
        self.export = PushButton(text="Export CSV")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout = scrolled_layout(self)
        for widget in (self.form.native, self.status, self.table, self.export.native):
            layout.addWidget(widget)
        self.form.register.changed.connect(self.register)
        self.form.segment.changed.connect(self.segment)
        self.form.evaluate.changed.connect(self.evaluate)
        self.form.atlas.changed.connect(self.form.target.reset_choices)  # the atlas is never its own target
        self.form.atlas_labels.changed.connect(self.form.truth.reset_choices)
        self.export.changed.connect(lambda: self.export_csv())
        self.export.enabled = False
        self.follow_layers(napari_viewer)
        self.worker = None
        self.evaluation = None
        self._model = (None, None)
        self.load_torch()

    def _load_model(self):
        """The model (cached while the path and device stay the same); runs in the worker."""
        from ..api import load_model

        key = (str(self.form.model.value), self.form.device.value)
        if self._model[0] != key:
            self._model = (key, load_model(*key))
        return self._model[1]

    def _inputs(self, *names: str) -> dict:
        values = {name: getattr(self.form, name).value for name in names}
        missing = [name.replace("_", " ") for name, value in values.items() if value is None]
        if missing:
            raise ValueError("choose: " + ", ".join(missing))
        save_settings(**{"inference.model": str(self.form.model.value), "device": self.form.device.value})
        return values

    # --- actions ------------------------------------------------------------------------------------------
    def register(self) -> None:
        """Warped atlas image, warped atlas labels, displacement magnitude (mm) and Jacobian determinant,
        placed like the target."""
        try:
            layers = self._inputs("model", "atlas", "atlas_labels", "target")
        except ValueError as exc:
            return show_error(f"register: {exc}")
        try:
            atlas, target = image_volume(layers["atlas"], "atlas"), image_volume(layers["target"], "target")
        except ValueError as exc:
            return show_error(f"register: {exc}")
        labels, steps, like = to_volume(layers["atlas_labels"]), self.form.refine_steps.value, layers["target"]
        folder = self.form.labelled_set.value
        save_settings(labelled_set=path_or_none(folder))

        def work():
            from ..api import register, register_atlases

            more = labelled_volumes(folder)
            if more:  # multi-atlas: the maps shown are the atlas's own registration's
                fused = register_atlases(self._load_model(), [(atlas, labels), *more], target, "local", steps)
                result, pseudo, count = fused.results[0], fused.labels, len(fused.results)
            else:
                result = register(self._load_model(), (atlas, labels), target, steps)
                pseudo, count = result.warped_labels, 1
            return result, pseudo, count, result.displacement_magnitude(), result.jacobian_determinant()

        def done(outputs) -> None:
            result, pseudo, count, magnitude, jacobian = outputs
            name = like.name
            for volume, suffix in (
                (result.warped_image, "warped atlas"),
                (magnitude, "displacement mm"),
                (jacobian, "Jacobian determinant"),
            ):  # derived maps: hidden, under the labels, one click away
                upsert(self.viewer, *like_layer(volume, like, f"{name} {suffix}", "image"), "result", visible=False)
            self.show_result(like_layer(pseudo, like, f"{name} pseudo labels", "labels"), like)
            what = "the atlas" if count == 1 else f"{count} labelled volumes (labels fused)"
            self.status.setText(f"registered {what} onto {name}: folding {100 * result.folding:.2f}%")

        self._run("register", work, done)

    def segment(self) -> None:
        """Final labels (medical branch) and the auto-prompt mask (general branch), placed like the target; with
        "registration prior", the atlas's warped labels (with a labelled set: every labelled volume's, fused) fused
        into the final labels (`api.segment(atlas=, labelled=)`); with "mirror", test-time mirroring with
        FreeSurfer's left / right pairs (`api.segment(mirror=)`)."""
        prior, mirror = self.form.prior.value, self.form.mirror.value
        try:
            layers = self._inputs("model", "target", *(("atlas", "atlas_labels") if prior else ()))
        except ValueError as exc:
            return show_error(f"segment: {exc}")
        try:
            target, like = image_volume(layers["target"], "target"), layers["target"]
            atlas = (image_volume(layers["atlas"], "atlas"), to_volume(layers["atlas_labels"])) if prior else None
        except ValueError as exc:
            return show_error(f"segment: {exc}")
        steps, model_file = self.form.refine_steps.value, Path(str(self.form.model.value)).name
        folder = self.form.labelled_set.value if prior else None
        from ..api import run_propagated_atlases

        beside = None if folder else run_propagated_atlases(str(self.form.model.value))  # a hint, when unused

        def work():
            from ..api import FREESURFER_LEFT_RIGHT, labelled_set, segment

            model = self._load_model()
            if not hasattr(model, "segment"):
                raise ValueError(
                    f"{model_file} is a registration model: it registers (Register) but does not segment. "
                    "Choose the co-trained model, rrl_medsam.pt in the training widget's output folder."
                )
            pairs = FREESURFER_LEFT_RIGHT if mirror else None
            more = len(labelled_set(folder)) if folder else 0  # a labelled set, or propagated atlases
            labelled = folder if more else ()  # the folder itself: the api knows propagated atlases by their marker
            result = segment(model, target, mirror=pairs, atlas=atlas, refine_steps=steps, labelled=labelled)
            return result, more + 1

        def done(outputs) -> None:
            result, count = outputs
            what = "RRL-MedSAM + prior labels" if prior else "RRL-MedSAM labels"
            auto = like_layer(result.auto_prompt, like, f"{like.name} auto-prompt", "labels")
            upsert(self.viewer, *auto, "result", visible=False)
            self.show_result(like_layer(result.labels, like, f"{like.name} {what}", "labels"), like)
            source = "the registration prior" if count == 1 else f"the registration prior of {count} atlases"
            hint = (
                f". This run's propagated atlases are in {beside}: choose that folder as the labelled set, with "
                "registration prior ticked, for the prior they make with the atlas"
                if beside
                else ""
            )
            self.status.setText(f"segmented {like.name}" + (f" with {source}" if prior else "") + hint)

        self._run("segment", work, done)

    def show_result(self, layer_data: tuple, like) -> None:
        """Show a result labels layer on top, the only visible result for its volume; it becomes the prediction."""
        layer = upsert(self.viewer, *layer_data, "result", visible=True)
        others = [x for x in self.viewer.layers if role(x) == "result" and x.name.startswith(f"{like.name} ")]
        show_only(self.viewer, layer, [x for x in others if is_kind(x, "labels")])
        self.form.prediction.reset_choices()
        self.form.prediction.value = layer

    def evaluate(self) -> None:
        """Per-structure Dice and HD95 of the prediction layer against the ground-truth layer."""
        pred, truth = self.form.prediction.value, self.form.truth.value
        if pred is None or truth is None:
            return show_error("evaluate: choose a prediction and a ground-truth labels layer.")
        p, t = to_volume(pred), to_volume(truth)
        names = label_names(truth.metadata.get("source_path"))

        def work():
            from ..api import evaluate, resample

            evaluation = evaluate(p if p.grid.same_as(t.grid) else resample(p, t.grid), t)
            evaluation.names = names
            return evaluation

        self._run("evaluate", work, self.show_evaluation)

    def show_evaluation(self, evaluation) -> None:
        self.evaluation = evaluation
        rows = [  # the mean first: always in view
            {"label": "mean", "name": "", "dice": evaluation.mean_dice, "hd95_mm": evaluation.mean_hd95}
        ] + evaluation.rows()
        self.table.setRowCount(len(rows))
        for i, row in enumerate(rows):
            cells = [str(row["label"]), row["name"], _number(row["dice"]), _number(row["hd95_mm"])]
            for j, text in enumerate(cells):
                self.table.setItem(i, j, QTableWidgetItem(text))
        self.export.enabled = True
        self.status.setText(f"mean Dice {evaluation.mean_dice:.3f} over {len(evaluation.labels)} structures")

    def export_csv(self, path: str | Path | None = None) -> Path | None:
        if self.evaluation is None:
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export scores", "scores.csv", "CSV (*.csv)")
            if not path:
                return None
        return self.evaluation.to_csv(path, overwrite=True)  # the save dialog asked before replacing a file


def labelled_volumes(folder) -> list:
    """The (image, labels) volumes of the labelled set in `folder` (none: no folder, or nothing added yet)."""
    from ..api import labelled_set

    return [case.load() for case in labelled_set(folder)] if folder else []


def label_names(source: str | None) -> dict[int, str] | None:
    """Structure names from the `dataset.json` beside the `labels/` folder a truth file came from (the layout of
    the bundled sample and of one-shot task folders), if there is one."""
    if not source or not (Path(source).parent.parent / "dataset.json").exists():
        return None
    try:
        spec = json.loads((Path(source).parent.parent / "dataset.json").read_text())
        return {int(k): str(v) for k, v in spec.get("label_names", {}).items()} or None
    except (OSError, ValueError, AttributeError):
        return None


def _number(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"
