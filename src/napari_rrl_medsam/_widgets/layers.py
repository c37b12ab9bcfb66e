"""Layers <-> `Volume`s for the widgets, on top of the reader's and writer's geometry helpers, and live layers
that are created once and then updated in place."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .._reader import layer_data
from .._writer import layer_affine, layer_volume
from ..api import Grid, Volume, resample

TRANSFORM_KEYS = ("scale", "translate", "rotate", "shear", "affine")


def layer_kind(layer) -> str:
    from napari.layers import Labels

    return "labels" if isinstance(layer, Labels) else "image"


def is_kind(layer, kind: str) -> bool:
    from napari.layers import Image, Labels

    return isinstance(layer, {"image": Image, "labels": Labels}[kind])


def to_volume(layer) -> Volume:
    """The layer as a `Volume` on its source file's grid (what the plugin's writer would save)."""
    data, meta, _ = layer.as_layer_data_tuple()
    return layer_volume(data, meta, layer_kind(layer))


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


def upsert(viewer, data: np.ndarray, kwargs: dict, kind: str):
    """Show `data` in the layer named `kwargs['name']`: set its data in place if it exists, else add it."""
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
            return layer
        viewer.layers.remove(layer)
    return getattr(viewer, f"add_{kind}")(data, **kwargs)


def show_volume(viewer, volume: Volume, name: str):
    """Show a working-grid volume (e.g. a training preview) placed in millimetres; updates in place."""
    data, kwargs, kind = layer_data(volume, name)
    if kind == "image":
        kwargs["colormap"] = "gray"
    return upsert(viewer, data, kwargs, kind)


def layer_choices(viewer, kind: str, optional: bool = False) -> Callable[[Any], list]:
    """A magicgui `choices` callable listing the viewer's 3D layers of one kind (by name, the layer as value);
    2D ones, such as the DSKD widget's embedding preview, are no volumes."""

    def choices(_widget=None) -> list:
        layers = [(layer.name, layer) for layer in viewer.layers if is_kind(layer, kind) and layer.ndim >= 3]
        return ([("(none)", None)] if optional else []) + layers

    return choices


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
