"""napari sample data: the bundled one-shot brain phantom (offline, shipped in the package)."""

from __future__ import annotations

from ._reader import LayerData, layer_data


def oneshot_brain() -> list[LayerData]:
    """Atlas image, atlas labels and the three target images, placed by their physical geometry."""
    from .data.sample import sample_task

    task = sample_task(check=False)
    atlas, atlas_labels = task.atlas.load()
    layers = [layer_data(atlas, "atlas"), layer_data(atlas_labels, "atlas labels")]
    for case in task.unlabelled + task.evaluation:
        layers.append(layer_data(case.load()[0], case.id))
    return layers
