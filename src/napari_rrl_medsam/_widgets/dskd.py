"""The DSKD dock widget: distil the general encoder from a SAM-family teacher, or keep the shipped one."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, PushButton, Select, SpinBox
from qtpy.QtWidgets import QLabel

from .jobs import distillation
from .layers import layer_choices, to_volume, upsert
from .runner import TrainingPanel, unfinished
from .settings import load_settings, path_or_none, save_settings

TEACHERS = [
    ("LiteMedSAM (bundled, offline)", "litemedsam"),
    ("SAM ViT-B from a checkpoint file", "sam_file"),
    ("SAM ViT-B (download once)", "sam_vit_b"),
]
DEVICES = ["auto", "cpu", "cuda"]
DEVICE_TIP = "where training runs: auto = a GPU when there is one, else the CPU"


def volume_files(folder: Path | None) -> list[Path]:
    from .. import api

    return api.volume_files(folder) if folder else []


class DistillWidget(TrainingPanel):
    """Teacher, photographs, unlabelled volumes, stage lengths; Start / Pause / Resume / Stop."""

    title = "DSKD"
    in_subprocess = True  # its medical stage runs ~15% slower in a worker thread (see api.in_subprocess)

    def __init__(self, napari_viewer) -> None:
        from ..api import defaults

        s, d = load_settings(), defaults("distill")
        self.use_shipped = PushButton(text="Use the shipped encoder (default)")
        form = Container(
            widgets=[
                self.use_shipped,
                ComboBox(
                    name="teacher",
                    label="teacher",
                    choices=TEACHERS,
                    value=s.get("dskd.teacher", "litemedsam"),
                    tooltip="the frozen SAM-family image encoder the small general encoder learns to imitate",
                ),
                FileEdit(
                    name="sam_checkpoint",
                    label="SAM ViT-B file",
                    mode="r",
                    nullable=True,
                    value=s.get("dskd.sam_checkpoint"),
                    tooltip="a SAM ViT-B checkpoint (.pth), for the teacher 'SAM ViT-B from a checkpoint file'",
                ),
                FileEdit(
                    name="natural",
                    label="photographs",
                    mode="d",
                    nullable=True,
                    value=s.get("dskd.natural"),
                    tooltip="folder of JPEG/PNG photographs; empty: the photographs scikit-image ships",
                ),
                Select(
                    name="volumes",
                    label="unlabelled volumes",
                    choices=layer_choices(napari_viewer, "image"),
                    tooltip="stage 2 learns from axial slices of these volumes (select several)",
                ),
                FileEdit(
                    name="volume_folder",
                    label="or a folder",
                    mode="d",
                    nullable=True,
                    value=s.get("dskd.volume_folder"),
                    tooltip="a folder of unlabelled NIfTI / TIFF volumes, used with the layers selected above",
                ),
                SpinBox(
                    name="natural_steps",
                    label="natural steps",
                    min=0,
                    max=10**6,
                    value=d["natural_steps"],
                    tooltip="stage 1: steps on photographs (general knowledge); 0 skips the stage",
                ),
                SpinBox(
                    name="medical_steps",
                    label="medical steps",
                    min=0,
                    max=10**6,
                    value=d["medical_steps"],
                    tooltip="stage 2: steps on slices of the unlabelled volumes; 0 skips the stage",
                ),
                SpinBox(
                    name="batch_size",
                    label="batch size",
                    min=1,
                    max=1024,
                    value=d["batch_size"],
                    tooltip="images per step (with the teacher's embeddings cached, memory grows with it)",
                ),
                ComboBox(
                    name="device", label="device", choices=DEVICES, value=s.get("device", "auto"), tooltip=DEVICE_TIP
                ),
                FileEdit(
                    name="cache_dir",
                    label="cache folder",
                    mode="d",
                    nullable=True,
                    value=s.get("cache_dir"),
                    tooltip="teacher embeddings are cached here; empty: the user cache folder",
                ),
                FileEdit(
                    name="out",
                    label="save encoder to",
                    mode="w",
                    filter="*.pt",
                    value=s.get("dskd.out", str(Path.home() / "rrl-medsam" / "general_encoder.pt")),
                    tooltip="the distilled encoder checkpoint; when complete, co-training uses it",
                ),
            ]
        )
        self.advanced: dict = {}  # further DistillConfig fields, for scripts (e.g. image_size, encoder)
        super().__init__(napari_viewer, form)
        self.encoder_label = QLabel()
        self.encoder_label.setWordWrap(True)
        self.body.insertWidget(self.body.count() - 1, self.encoder_label)
        self.use_shipped.changed.connect(self.choose_shipped)
        form.out.changed.connect(lambda: self._set_state(self.state))
        self.follow_layers(napari_viewer)
        self._show_encoder(s.get("encoder"))

    def choose_shipped(self) -> None:
        """The one-click default: co-training will use the encoder shipped with the package."""
        save_settings(encoder=None)
        self._show_encoder(None)

    def _show_encoder(self, path: str | None) -> None:
        from ..api import SHIPPED_ENCODER

        self.encoder_label.setText(
            f"encoder for co-training: {path}"
            if path
            else f"encoder for co-training: the shipped one ({SHIPPED_ENCODER.name}, distilled from LiteMedSAM)"
        )

    def resumable(self) -> bool:
        return unfinished(Path(self.form.out.value))

    def job(self, resume: bool) -> Callable[[], Iterator]:
        f = self.form
        teacher, checkpoint = f.teacher.value, f.sam_checkpoint.value
        sam_file = teacher == "sam_file"
        if sam_file and checkpoint is None:
            raise ValueError("choose the SAM ViT-B checkpoint file, or another teacher.")
        volumes = [to_volume(layer) for layer in f.volumes.value] + volume_files(f.volume_folder.value)
        if f.medical_steps.value > 0 and not volumes:
            raise ValueError(
                "choose unlabelled volumes (image layers or a folder) for the medical stage, or set its steps to 0."
            )
        out = Path(f.out.value)
        if not resume and out.exists():
            raise ValueError(
                f"{out} exists: press Resume to continue it, or choose another file."
                if self.resumable()
                else f"{out} is a finished encoder; choose another file for a new one."
            )
        settings = {
            "natural_steps": f.natural_steps.value,
            "medical_steps": f.medical_steps.value,
            "batch_size": f.batch_size.value,
            "device": f.device.value,
            **self.advanced,
        }
        save_settings(
            **{
                "device": f.device.value,
                "cache_dir": path_or_none(f.cache_dir.value),
                "dskd.teacher": teacher,
                "dskd.sam_checkpoint": path_or_none(checkpoint),
                "dskd.natural": path_or_none(f.natural.value),
                "dskd.volume_folder": path_or_none(f.volume_folder.value),
                "dskd.out": str(out),
            }
        )
        return partial(
            distillation,
            volumes,
            f.natural.value,
            "sam_vit_b" if sam_file else teacher,
            checkpoint if sam_file else None,
            out,
            resume,
            settings,
            f.cache_dir.value,
        )

    def show_preview(self, event) -> None:
        # 2D: napari shows it over every slice of the volumes
        upsert(
            self.viewer,
            event.preview["embedding"].astype(np.float32),
            {"name": "DSKD: student embedding (a slice)", "colormap": "viridis"},
            "image",
            "live",
        )

    def on_finished(self) -> None:
        from ..api import load_checkpoint

        out = Path(self.form.out.value)
        if self.failed is None and out.exists() and load_checkpoint(out, "distill").get("complete"):
            save_settings(encoder=str(out))
            self._show_encoder(str(out))
