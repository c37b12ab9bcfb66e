"""The co-training dock widget: registration network, then both segmentation branches, with live layers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Select, SpinBox
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QLabel

from .._reader import FRAME
from .dskd import DEVICE_TIP, DEVICES, volume_files
from .jobs import one_shot_training
from .layers import (
    field_value,
    has_labels,
    image_volume,
    is_kind,
    layer_choices,
    named,
    role,
    show_only,
    show_volume,
    to_volume,
)
from .runner import TrainingPanel, unfinished
from .settings import labelled_set_field, load_settings, path_or_none, save_settings


def continued_from(registration: Path) -> Path | None:
    """The run folder a continuation in `registration`'s folder started from (its checkpoint says), else None."""
    from ..api import InputError, load_checkpoint

    try:
        origin = load_checkpoint(registration).get("initialised_from") if registration.is_file() else None
    except (InputError, OSError):
        return None
    return Path(origin).parent if origin and Path(origin).name == "registration.pt" else None


# preview key -> (live layer name, kind); the engines put these arrays on the atlas's working grid
LIVE = {
    "target": ("live: current volume", "image"),
    "warped_atlas": ("live: warped atlas", "image"),
    "pseudo_labels": ("live: pseudo labels", "labels"),
    "auto_prompt": ("live: auto-prompt mask", "labels"),
    "segmentation": ("live: segmentation", "labels"),
}
WATCH = ("segmentation", "pseudo_labels", "auto_prompt")  # the live labels layer shown: the first there is


class CotrainWidget(TrainingPanel):
    """Atlas + unlabelled volumes -> registration (pseudo labels) -> co-trained RRL-MedSAM model."""

    title = "co-training"
    actions = (*TrainingPanel.actions, "Continue training")
    in_subprocess = True  # co-training runs 15-20% slower in a worker thread (see api.in_subprocess)

    def __init__(self, napari_viewer) -> None:
        from ..api import CONTINUE, QUICK, defaults

        s, quick = load_settings(), QUICK
        recipe = (defaults("registration")["steps"], defaults("cotrain"))
        budget = "the quick budget (about 7 minutes for the bundled sample on 2 CPU cores)"
        v, built = napari_viewer, {}
        atlas = lambda: [field_value(built.get("form"), "atlas")]  # noqa: E731
        atlas_labels = lambda: [field_value(built.get("form"), "atlas_labels")]  # noqa: E731
        form = Container(
            widgets=[
                ComboBox(
                    name="atlas",
                    label="atlas image",
                    choices=layer_choices(v, "image", prefer=named("atlas")),
                    tooltip="the one labelled volume",
                ),
                ComboBox(
                    name="atlas_labels",
                    label="atlas labels",
                    choices=layer_choices(v, "labels", prefer=named("atlas")),
                    tooltip="the atlas's label map: the structures the model learns",
                ),
                Select(
                    name="unlabelled",
                    label="unlabelled volumes",
                    choices=layer_choices(v, "image", exclude=atlas),
                    tooltip="the volumes without labels the registration and the model train on (select several)",
                ),
                FileEdit(
                    name="folder",
                    label="or a folder",
                    mode="d",
                    nullable=True,
                    value=s.get("cotrain.folder"),
                    tooltip="a folder of unlabelled NIfTI / TIFF volumes, used with the layers selected above",
                ),
                labelled_set_field(
                    "optional: further labelled volumes (the correction widget's 'Add to labelled set'), "
                    "trained on like the atlas (an unlabelled layer of the same name is then left out). Continue "
                    "training fine-tunes the finished run in the output folder with them"
                ),
                ComboBox(
                    name="val_image",
                    label="validation image",
                    choices=layer_choices(v, "image", True, prefer=has_labels(v), exclude=atlas),
                    tooltip="optional: a labelled volume (not trained on) whose Dice the plot shows as training goes",
                ),
                ComboBox(
                    name="val_labels",
                    label="validation labels",
                    choices=layer_choices(v, "labels", True, prefer=named(" labels"), exclude=atlas_labels),
                    tooltip="the validation image's true label map",
                ),
                FileEdit(
                    name="encoder",
                    label="encoder",
                    mode="r",
                    nullable=True,
                    value=s.get("encoder"),
                    tooltip="a distilled encoder checkpoint; empty: the shipped encoder",
                ),
                SpinBox(
                    name="registration_steps",
                    label="registration steps",
                    min=0,
                    max=10**6,
                    value=quick["registration"]["steps"],
                    tooltip=f"{budget}; real scans: {recipe[0]} (the recipe, about 15 minutes on 2 cores); 0 or a "
                    "complete checkpoint in the output folder: no registration training",
                ),
                SpinBox(
                    name="cotrain_steps",
                    label="co-training steps",
                    min=1,
                    max=10**6,
                    value=quick["cotrain"]["steps"],
                    tooltip=f"{budget}, at constant rates; real scans: {recipe[1]['steps']} at "
                    f"{recipe[1]['image_size']} px (the recipe, about 30 minutes on 2 cores). Far fewer steps give "
                    "a model below its registration",
                ),
                SpinBox(
                    name="slab",
                    label="slab (slices)",
                    min=1,
                    max=256,
                    value=recipe[1]["slab"],
                    tooltip=f"consecutive axial slices the 3D decoders see per step (the recipe's {recipe[1]['slab']})",
                ),
                SpinBox(
                    name="image_size",
                    label="slice size (px)",
                    min=16,
                    max=1024,
                    step=16,
                    value=quick["cotrain"]["image_size"],
                    tooltip=f"encoder input per slice: {budget}; about the working grid's slice width (2 mm brain "
                    f"slices are about 112 px: the recipe's {recipe[1]['image_size']})",
                ),
                ComboBox(
                    name="device", label="device", choices=DEVICES, value=s.get("device", "auto"), tooltip=DEVICE_TIP
                ),
                CheckBox(
                    name="propagate",
                    label="propagated atlases",
                    value=s.get("cotrain.propagate", True),
                    tooltip="one-shot runs: at the end, the model segments the unlabelled volumes into "
                    "<output folder>/propagated, a labelled set of its own labels (about one segmentation per "
                    "volume). Segmenting with the registration prior and that folder as the labelled set gave the "
                    "best result with ten unlabelled brains (0.795 against 0.782 with the atlas alone), not with the "
                    "bundled sample's two: the verdict compares them on the validation pair",
                ),
                FileEdit(
                    name="out",
                    label="output folder",
                    mode="d",
                    value=s.get("cotrain.out", str(Path.home() / "rrl-medsam" / "run")),
                    tooltip="registration.pt and rrl_medsam.pt (the model to segment with) are written here; "
                    "Resume continues the run found there",
                ),
            ]
        )
        built["form"] = form
        # further RegistrationTrainConfig / CotrainConfig fields, for scripts (e.g. checkpoint_every, network)
        self.registration_settings: dict = {}
        self.cotrain_settings: dict = {}
        self.grid = None
        self.propagated: Path | None = None  # the run's propagated atlases folder, when it makes one
        self.frame = "radiological"
        self.validated = False
        super().__init__(napari_viewer, form)
        self.verdict = QLabel("")  # which result to trust, once a run has finished
        self.verdict.setWordWrap(True)
        self.body.insertWidget(self.body.count() - 1, self.verdict)
        form.out.changed.connect(lambda: self._set_state(self.state))
        form.labelled_set.changed.connect(lambda: self._set_state(self.state))
        self.buttons["Continue training"].clicked.connect(lambda: self.start(resume=False, job=self.continue_job))
        self.buttons["Continue training"].setToolTip(
            "fine-tune the finished run in the output folder with the labelled set (registration, then co-training; "
            f"at most {CONTINUE['registration']['steps']} and {CONTINUE['cotrain']['steps']} steps added, fewer "
            "when the form's steps are fewer), into a new folder beside it that becomes the output folder"
        )
        self.follow_layers(napari_viewer)

    def paths(self) -> tuple[Path, Path]:
        out = Path(self.form.out.value)
        return out / "registration.pt", out / "rrl_medsam.pt"

    def resumable(self) -> bool:
        """A run in the output folder that has not finished: registration or co-training short of its steps."""
        registration, model = self.paths()
        return unfinished(model) or (registration.exists() and not model.exists())

    def idle_actions(self) -> set[str]:
        """Continue training: with a finished run in the output folder and a labelled set chosen."""
        registration, model = self.paths()
        finished = model.is_file() and not unfinished(model) and not unfinished(registration)
        return {"Continue training"} if finished and self.form.labelled_set.value else set()

    def job(self, resume: bool) -> Callable[[], Iterator]:
        """A new run (few-shot with a labelled set), or with `resume` the run in the output folder continued (a
        continuation, `continue_job`'s, resumes as one)."""
        reg_path = self.paths()[0]
        if not resume and any(p.exists() for p in self.paths()):
            raise ValueError(
                f"{reg_path.parent} already holds a run: press Resume to continue it, or choose another output folder."
                if self.resumable()
                else f"{reg_path.parent} holds a finished run (its model: {self.paths()[1].name}); choose another "
                "output folder for a new one, or Continue training it with a labelled set."
            )
        run = continued_from(reg_path) if resume else None
        return self._job(reg_path.parent, resume, run)

    def continue_job(self, resume: bool = False) -> Callable[[], Iterator]:
        """The finished run in the output folder fine-tuned with the labelled set, into a new folder beside it
        (`<run>+<n>labelled`, which becomes the output folder)."""
        from ..api import labelled_set

        run, folder = self.paths()[0].parent, self.form.labelled_set.value
        count = len(labelled_set(folder)) if folder else 0
        if not count:
            raise ValueError(
                "choose a labelled set holding corrected volumes (the correction widget's 'Add to labelled set') "
                "to continue training with."
            )
        out = run.parent / f"{run.name}+{count}labelled"
        for n in range(2, 1000):
            if not out.exists():
                break
            out = run.parent / f"{run.name}+{count}labelled-{n}"
        job = self._job(out, False, run)
        self.form.out.value = out
        return job

    def _job(self, out: Path, resume: bool, run: Path | None) -> Callable[[], Iterator]:
        """The training job of the form's inputs into `out`: a new run, or `run` continued (`continue_training`,
        at most `api.CONTINUE`'s steps added per stage)."""
        from ..api import CONTINUE, QUICK, working_grid

        f = self.form
        atlas, labels, unlabelled, validation, folder = self._inputs()
        self.verdict.setText(self._budget_warning(f.cotrain_steps.value))
        self.validated = validation is not None
        device, encoder_path = f.device.value, f.encoder.value
        reg = dict(steps=f.registration_steps.value, device=device, **self.registration_settings)
        cot = {
            **QUICK["cotrain"],  # constant rates, as the quick budget was measured
            "steps": f.cotrain_steps.value,
            "slab": f.slab.value,
            "image_size": f.image_size.value,
            "device": device,
            **self.cotrain_settings,
        }
        if run is not None:
            reg["steps"] = min(reg["steps"], CONTINUE["registration"]["steps"])
            cot["steps"] = min(cot["steps"], CONTINUE["cotrain"]["steps"])
        self.grid = working_grid(atlas, reg.get("spacing", 2.0))
        save_settings(
            **{
                "device": device,
                "encoder": path_or_none(encoder_path),
                "cotrain.out": str(out),
                "cotrain.folder": path_or_none(f.folder.value),
                "labelled_set": path_or_none(f.labelled_set.value),
                "cotrain.propagate": f.propagate.value,
            }
        )
        self.propagated = out / "propagated" if f.propagate.value and folder is None and run is None else None
        args = (atlas, labels, unlabelled, validation, encoder_path, out, resume, reg, cot, folder, run)
        return partial(one_shot_training, *args, propagate=self.propagated is not None)

    def _inputs(self) -> tuple:
        """(atlas, atlas labels, unlabelled volumes, validation pair or None, the labelled set's folder or None when
        it holds nothing) from the form's layers and folders; an unlabelled layer named like a volume of the
        labelled set is left out (it has labels now)."""
        from ..api import labelled_set

        f = self.form
        if f.atlas.value is None or f.atlas_labels.value is None:
            raise ValueError("choose the atlas image and its labels layer.")
        atlas, labels = image_volume(f.atlas.value, "atlas"), to_volume(f.atlas_labels.value)
        self.frame = (f.atlas.value.metadata or {}).get(FRAME, "array")  # previews overlay the atlas's frame
        named_labelled = {case.id for case in labelled_set(f.labelled_set.value)} if f.labelled_set.value else set()
        folder = f.labelled_set.value if named_labelled else None
        unlabelled = [
            image_volume(layer, "unlabelled volume")
            for layer in f.unlabelled.value
            if layer is not f.atlas.value and layer.name not in named_labelled
        ]
        unlabelled += volume_files(f.folder.value)
        if (f.val_image.value is None) != (f.val_labels.value is None):
            raise ValueError("validation needs both an image and its labels layer (or neither).")
        validation = None
        if f.val_image.value is not None:
            if f.val_image.value.name in named_labelled:
                raise ValueError(
                    f"'{f.val_image.value.name}' is in the labelled set, so it is trained on: its Dice would not "
                    "measure the model. Choose another validation volume (or none)."
                )
            validation = (image_volume(f.val_image.value, "validation"), to_volume(f.val_labels.value))
        return atlas, labels, unlabelled, validation, folder

    def _budget_warning(self, steps: int) -> str:
        from ..api import QUICK

        if steps >= QUICK["cotrain"]["steps"]:
            return ""
        return (
            f"Warning: {steps} co-training steps are fewer than the quick budget's {QUICK['cotrain']['steps']}. "
            "Such short runs give a model below its registration (60 steps: Dice 0.12 on the sample's target03, "
            "against 0.63 for the registration); use the registration's pseudo labels, or train longer."
        )

    def show_evaluation(self, event) -> None:
        """Which result to trust: the validation Dice of the registration, the model, the model with the registration
        prior and (when the run made them) with the propagated atlases' prior, side by side, and the best named."""
        m = event.metrics
        results = {
            "registration": (m["dice_registration"], "use Register's pseudo labels, or train longer (the recipe: "
                             "3,300 co-training steps at 128 px)"),
            "RRL-MedSAM": (m["dice_model"], "segment with rrl_medsam.pt (Register and segment)"),
            "with the registration prior": (m.get("dice_prior"), "Segment with rrl_medsam.pt and the registration "
                                            "prior ticked (Register and segment)"),
            "with the propagated atlases' prior": (m.get("dice_propagated"), "Segment with rrl_medsam.pt, the "
                                                   f"registration prior ticked and the labelled set {self.propagated}"),
        }  # fmt: skip
        scored = {name: value for name, value in results.items() if value[0] is not None}
        best = max(scored, key=lambda name: scored[name][0])
        figures = ", ".join(f"{name} {dice:.3f}" for name, (dice, _) in scored.items())
        self.verdict.setText(f"Validation Dice on the native grid: {figures}. Best: {best}: {scored[best][1]}.")

    def on_finished(self) -> None:
        event = self.last_event
        finished = self.failed is None and event is not None and event.step >= event.total
        if finished and not self.validated:
            warning = self.verdict.text()
            self.verdict.setText(
                (warning + "\n" if warning else "")
                + "No validation volume was given, so nothing here measured this model. For reference, the quick "
                "budget on the bundled sample gives RRL-MedSAM 0.776-0.822 against the registration's 0.729-0.772 "
                "(evaluation target, three seeds, README); give a labelled validation pair to see them side by side."
                + (
                    f" The propagated atlases are in {self.propagated}: Segment with the registration prior and "
                    "that folder as the labelled set for the best result."
                    if self.propagated is not None
                    else ""
                )
            )

    def show_preview(self, event) -> None:
        from ..api import Volume

        for key, (name, kind) in LIVE.items():
            array = event.preview.get(key)
            if array is None:
                continue
            affine = self.grid.affine if self.grid is not None and array.shape == self.grid.shape else np.eye(4)
            show = partial(self._show_live, key, Volume(np.asarray(array), affine, kind), name)
            if name in self.viewer.layers:
                show()  # in place: ~10 ms plus the redraw
            else:  # adding a layer takes ~0.2 s: one per turn of the event loop, so the GUI stays responsive
                QTimer.singleShot(0, show)

    def _show_live(self, key: str, volume, name: str) -> None:
        """A live layer: images under the labels, the warped atlas hidden (it would hide the current volume), one
        live labels layer shown at a time: the one most worth watching so far (`WATCH`), the others one click away."""
        if name in self.viewer.layers:
            show_volume(self.viewer, volume, name, frame=self.frame)
            return
        live = [x for x in self.viewer.layers if role(x) == "live" and is_kind(x, "labels")]
        watched = [k for k in WATCH if k == key or LIVE[k][0] in {x.name for x in live}]
        shown = key != "warped_atlas" and (volume.kind == "image" or watched[0] == key)
        layer = show_volume(self.viewer, volume, name, "live", shown, self.frame)
        if volume.kind == "labels" and shown:
            show_only(self.viewer, layer, live)
