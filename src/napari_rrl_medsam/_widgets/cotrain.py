"""The co-training dock widget: registration network, then both segmentation branches, with live layers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Select, SpinBox
from qtpy.QtCore import QTimer

from .dskd import DEVICES, volume_files
from .jobs import one_shot_training
from .layers import layer_choices, show_volume, to_volume
from .runner import TrainingPanel
from .settings import load_settings, path_or_none, save_settings
from .torch_import import import_torch_stack

# preview key -> (live layer name, kind); the engines put these arrays on the atlas's working grid
LIVE = {
    "target": ("live: current volume", "image"),
    "warped_atlas": ("live: warped atlas", "image"),
    "pseudo_labels": ("live: pseudo labels", "labels"),
    "auto_prompt": ("live: auto-prompt mask", "labels"),
    "segmentation": ("live: segmentation", "labels"),
}


class CotrainWidget(TrainingPanel):
    """Atlas + unlabelled volumes -> registration (pseudo labels) -> co-trained RRL-MedSAM model."""

    title = "co-training"
    in_subprocess = True  # co-training runs 15-20% slower in a worker thread (see api.in_subprocess)

    def __init__(self, napari_viewer) -> None:
        from ..api import QUICK, defaults

        import_torch_stack()  # before reading the defaults: the config classes import torch
        s, quick = load_settings(), QUICK
        recipe = (defaults("registration")["steps"], defaults("cotrain"))
        budget = "the quick budget (about 7 minutes for the bundled sample on 2 CPU cores)"
        v = napari_viewer
        form = Container(
            widgets=[
                ComboBox(name="atlas", label="atlas image", choices=layer_choices(v, "image")),
                ComboBox(name="atlas_labels", label="atlas labels", choices=layer_choices(v, "labels")),
                Select(name="unlabelled", label="unlabelled volumes", choices=layer_choices(v, "image")),
                FileEdit(name="folder", label="or a folder", mode="d", nullable=True, value=s.get("cotrain.folder")),
                ComboBox(name="val_image", label="validation image", choices=layer_choices(v, "image", True)),
                ComboBox(name="val_labels", label="validation labels", choices=layer_choices(v, "labels", True)),
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
                    f"{recipe[1]['image_size']} px (the recipe, about 35 minutes on 2 cores). Far fewer steps give "
                    "a model below its registration",
                ),
                SpinBox(
                    name="slab",
                    label="slab (slices)",
                    min=1,
                    max=256,
                    value=recipe[1]["slab"],
                    tooltip="consecutive slices the 3D decoders see per step",
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
                ComboBox(name="device", label="device", choices=DEVICES, value=s.get("device", "auto")),
                FileEdit(
                    name="out",
                    label="output folder",
                    mode="d",
                    value=s.get("cotrain.out", str(Path.home() / "rrl-medsam" / "run")),
                ),
            ]
        )
        # further RegistrationTrainConfig / CotrainConfig fields, for scripts (e.g. checkpoint_every, network)
        self.registration_settings: dict = {}
        self.cotrain_settings: dict = {}
        self.grid = None
        super().__init__(napari_viewer, form)
        form.out.changed.connect(lambda: self._set_state(self.state))
        self.follow_layers(napari_viewer)

    def paths(self) -> tuple[Path, Path]:
        out = Path(self.form.out.value)
        return out / "registration.pt", out / "rrl_medsam.pt"

    def resumable(self) -> bool:
        return any(p.exists() for p in self.paths())

    def job(self, resume: bool) -> Callable[[], Iterator]:
        from ..api import QUICK, working_grid

        f = self.form
        if f.atlas.value is None or f.atlas_labels.value is None:
            raise ValueError("choose the atlas image and its labels layer.")
        atlas, labels = to_volume(f.atlas.value), to_volume(f.atlas_labels.value)
        unlabelled = [to_volume(layer) for layer in f.unlabelled.value if layer is not f.atlas.value]
        unlabelled += volume_files(f.folder.value)
        if (f.val_image.value is None) != (f.val_labels.value is None):
            raise ValueError("validation needs both an image and its labels layer (or neither).")
        validation = (to_volume(f.val_image.value), to_volume(f.val_labels.value)) if f.val_image.value else None
        reg_path = self.paths()[0]
        if not resume and self.resumable():
            raise ValueError(
                f"{reg_path.parent} already holds a run: press Resume to continue it, or choose another output folder."
            )
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
        self.grid = working_grid(atlas, reg.get("spacing", 2.0))
        save_settings(
            **{
                "device": device,
                "encoder": path_or_none(encoder_path),
                "cotrain.out": str(reg_path.parent),
                "cotrain.folder": path_or_none(f.folder.value),
            }
        )
        return partial(
            one_shot_training,
            atlas,
            labels,
            unlabelled,
            validation,
            encoder_path,
            reg_path.parent,
            resume,
            reg,
            cot,
        )

    def show_preview(self, event) -> None:
        from ..api import Volume

        for key, (name, kind) in LIVE.items():
            array = event.preview.get(key)
            if array is None:
                continue
            affine = self.grid.affine if self.grid is not None and array.shape == self.grid.shape else np.eye(4)
            show = partial(show_volume, self.viewer, Volume(np.asarray(array), affine, kind), name)
            if name in self.viewer.layers:
                show()  # in place: ~10 ms plus the redraw
            else:  # adding a layer takes ~0.2 s: one per turn of the event loop, so the GUI stays responsive
                QTimer.singleShot(0, show)
