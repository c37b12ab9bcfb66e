"""napari sample data: the bundled one-shot brain phantom (offline, shipped in the package)."""

from __future__ import annotations

from ._reader import LayerData, layer_data


def oneshot_brain() -> list[LayerData]:
    """The atlas and the three target images, then the atlas labels and the evaluation target's true labels (labels
    layers above the images), all placed by their physical geometry."""
    from .data.sample import sample_task

    task = sample_task(check=False)
    atlas, atlas_labels = task.atlas.load()
    images, labels = [layer_data(atlas, "atlas")], [layer_data(atlas_labels, "atlas labels")]
    for case in task.unlabelled + task.evaluation:
        image, truth = case.load()
        images.append(layer_data(image, case.id))
        if truth is not None:  # the evaluation volume's labels: what the inference widget scores against
            labels.append(layer_data(truth, f"{case.id} labels"))
    return images + labels
