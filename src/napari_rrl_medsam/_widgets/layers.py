"""Layers <-> `Volume`s for the widgets, on top of the reader's and writer's geometry helpers, and live layers
that are created once and then updated in place."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .._reader import layer_data
from .._writer import layer_affine, layer_volume
from ..api import Grid, Volume, resample

TRANSFORM_KEYS = ("scale", "translate", "rotate", "shear", "affine", "axis_labels", "units")


def layer_kind(layer) -> str:
    from napari.layers import Labels

    return "labels" if isinstance(layer, Labels) else "image"


def is_kind(layer, kind: str) -> bool:
    from napari.layers import Image, Labels

    return isinstance(layer, {"image": Image, "labels": Labels}[kind])


def to_volume(layer) -> Volume:
    """The layer as a `Volume` on its source file's grid (what the plugin's writer would save), named after that
    file when the layer was read from one (checkpoints and propagated atlases name volumes so)."""
    from dataclasses import replace
    from pathlib import Path

    data, meta, _ = layer.as_layer_data_tuple()
    volume = layer_volume(data, meta, layer_kind(layer))
    source = getattr(getattr(layer, "source", None), "path", None)
    return replace(volume, path=Path(source)) if source and volume.path is None else volume


def like_layer(volume: Volume, like, name: str, kind: str) -> tuple[np.ndarray, dict, str]:
    """Layer data for `volume` (e.g. a segmentation of `like`'s image) placed exactly like `like`: same data
    orientation, scale, translate, affine and metadata, so the writer saves it on the source file's grid."""
    _, meta, _ = like.as_layer_data_tuple()
    grid = Grid(np.shape(like.data)[-3:], layer_affine(meta))
    array = resample(volume.with_array(volume.array, kind=kind), grid).array  # exact re-indexing when aligned
    kwargs: dict[str, Any] = {k: meta[k] for k in TRANSFORM_KEYS if meta.get(k) is not None}
    kwargs.update(name=name, metadata=dict(meta.get("metadata") or {}))
    if kind == "image":
        kwargs["colormap"] = "magma"
    return array, kwargs, kind


# layer metadata key saying a layer is a widget's output, never an input: "live" (training previews) or "result"
ROLE = "rrl_medsam_role"


def role(layer) -> str | None:
    """ "live", "result" or None (the user's own layers)."""
    return (layer.metadata or {}).get(ROLE)


def upsert(viewer, data: np.ndarray, kwargs: dict, kind: str, role: str | None = None, visible: bool | None = None):
    """Show `data` in the layer named `kwargs['name']`: set its data in place if it exists, else add it (image
    layers below every labels layer, so labels stay readable). `role` marks it as a widget's output; `visible`
    None keeps a layer's visibility (new layers are shown)."""
    name = kwargs["name"]
    if name in viewer.layers:
        layer = viewer.layers[name]
        if is_kind(layer, kind) and layer.ndim == np.ndim(data):
            layer.data = data
            for key in ("scale", "translate"):
                if key in kwargs and not np.allclose(getattr(layer, key), kwargs[key]):
                    setattr(layer, key, kwargs[key])
            if kind == "image":
                layer.contrast_limits = (float(np.min(data)), float(np.max(data)) or 1.0)
            if visible is not None:
                layer.visible = visible
            return layer
        viewer.layers.remove(layer)
    if role is not None:
        kwargs = {**kwargs, "metadata": {**(kwargs.get("metadata") or {}), ROLE: role}}
    if visible is not None:
        kwargs = {**kwargs, "visible": visible}
    layer = getattr(viewer, f"add_{kind}")(data, **kwargs)
    if kind == "image":
        below_labels(viewer, layer)
    return layer


def below_labels(viewer, layer) -> None:
    """Move an image layer under the lowest labels layer (napari draws later layers on top)."""
    lowest = next((i for i, other in enumerate(viewer.layers) if is_kind(other, "labels")), None)
    index = viewer.layers.index(layer)
    if lowest is not None and lowest < index:
        viewer.layers.move(index, lowest)


def show_only(viewer, layer, others) -> None:
    """Show `layer` and hide the `others` (one labels layer at a time: several at 0.7 opacity blend into one)."""
    for other in others:
        if other is not layer:
            other.visible = False
    layer.visible = True


def show_volume(
    viewer, volume: Volume, name: str, role: str | None = None, visible: bool | None = None, frame: str | None = None
):
    """Show a working-grid volume (e.g. a training preview) placed in millimetres; updates in place (`upsert`).
    `frame`: the reader's world frame of the layers it lies over (`_reader.layer_data`)."""
    data, kwargs, kind = layer_data(volume, name, frame)
    if kind == "image":
        kwargs["colormap"] = "gray"
    return upsert(viewer, data, kwargs, kind, role, visible)


def layer_choices(
    viewer,
    kind: str,
    optional: bool = False,
    inputs: bool = True,
    prefer: Callable[[Any], bool] | None = None,
    exclude: Callable[[], list] | None = None,
) -> Callable[[Any], list]:
    """A magicgui `choices` callable listing the viewer's 3D layers of one kind (by name, the layer as value);
    2D ones, such as the DSKD widget's embedding preview, are no volumes.

    Args:
        viewer: the napari viewer.
        kind: "image" or "labels".
        optional: offer "(none)" (first, unless a layer is preferred).
        inputs: offer only the user's own layers, never a widget's live or result layers.
        prefer: layers for which it is true come first (the default choice), the newest first.
        exclude: the layers not to offer (e.g. the atlas among the unlabelled volumes).
    """

    def choices(_widget=None) -> list:
        excluded = exclude() if exclude is not None else []
        layers = [
            layer
            for layer in viewer.layers
            if is_kind(layer, kind)
            and layer.ndim >= 3
            and not (inputs and role(layer))
            and all(layer is not other for other in excluded)
        ]
        preferred = [x for x in reversed(layers) if prefer(x)] if prefer is not None else []
        rest = [x for x in layers if all(x is not p for p in preferred)]
        named = [(layer.name, layer) for layer in preferred + rest]
        none = [("(none)", None)] if optional else []
        return named[: len(preferred)] + none + named[len(preferred) :]  # (none) is the default unless preferred

    return choices


def named(word: str) -> Callable[[Any], bool]:
    """Prefer layers whose name holds `word` (e.g. "atlas")."""
    return lambda layer: word in layer.name.lower()


def has_labels(viewer) -> Callable[[Any], bool]:
    """Prefer image layers that have a labels layer named "<image> labels" (e.g. the sample's target03)."""
    return lambda layer: f"{layer.name} labels" in viewer.layers


def field_value(form, name: str):
    """A form field's value, or None while the form is being built (choices callables run before it exists)."""
    return getattr(getattr(form, name, None), "value", None) if form is not None else None


def looks_like_labels(layer) -> int | None:
    """The number of distinct values of an image layer that holds a label map (integer data with at most 64
    values, counted on every 4th voxel), else None."""
    data = np.asarray(layer.data)
    if not np.issubdtype(data.dtype, np.integer):
        return None
    values = np.unique(data[(slice(None, None, 4),) * data.ndim])
    return len(values) if len(values) <= 64 else None


def image_volume(layer, what: str) -> Volume:
    """An image layer as a `Volume`, refusing a label map chosen as an image.

    Args:
        layer: the chosen layer.
        what: its role in the user's words ("atlas image", "target image").
    """
    values = looks_like_labels(layer)
    if values is not None:
        raise ValueError(
            f"'{layer.name}' looks like a label map ({values} integer values), not an image: choose the {what}'s "
            "image layer. (A label map opened as an image layer: right-click it, Convert to Labels.)"
        )
    return to_volume(layer)


class FollowsLayers:
    """Mixin for a dock widget whose `form` has layer choosers: refreshed whenever layers are added, removed,
    reordered or renamed. napari holds bound methods weakly, so a closed widget can be freed."""

    form: Any

    def follow_layers(self, viewer) -> None:
        for emitter in (viewer.layers.events.inserted, viewer.layers.events.removed, viewer.layers.events.reordered):
            emitter.connect(self.refresh_choices)
        viewer.layers.events.inserted.connect(self._watch_name)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh_choices)

    def refresh_choices(self, event=None) -> None:
        self.form.reset_choices()

    def _watch_name(self, event) -> None:
        event.value.events.name.connect(self.refresh_choices)


def scrolled_layout(widget):
    """A vertical layout for `widget`'s contents inside a scroll area that fills it: a tall dock widget scrolls
    instead of growing napari's window past the screen (three docks stacked made it 2,100 px tall)."""
    from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

    body = QWidget()
    scroll = QScrollArea(widget)
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setWidget(body)
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(scroll)
    return QVBoxLayout(body)
