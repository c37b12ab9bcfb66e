"""One-shot registration at inference: a trained `RegistrationModel` maps the atlas onto any volume.

The network works on the atlas's working grid (RAS, isotropic); its displacement field becomes a
world-space `Field`, through which the atlas image and labels are warped from their native grid
straight onto the target's native grid (pseudo labels keep the atlas's native detail). Optional
instance optimisation refines the field on the pair itself (a few Adam steps on the same loss).
"""

from __future__ import annotations

import hashlib
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .configs import REFINE_STEPS
from .errors import InputError
from .resample import normalise_intensity, resample
from .task import check_atlas
from .volume import Grid, Volume
from .warp import Field, label_shares, resample_linear, source_coordinates, warp

KIND = "registration"
# encoder feature volumes a model keeps by content (28 MB each at the recipe's sizes): the atlas, the target at hand
# and ten further atlases (a labelled set or propagated atlases) are each computed once
FEATURE_CACHE = 12
# MONAI notes on every Warp that it uses PyTorch's grid_sample (its C++ extension is optional): not news.
warnings.filterwarnings("ignore", message="monai.networks.blocks.Warp: Using PyTorch native grid_sample")
# MONAI's DiffusionLoss indexes with a list; torch warns about a future change that has not come (torch 2.14).
warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")


@dataclass
class RegistrationResult:
    """Everything `register` produces; the volumes sit on the target's native grid with its affine."""

    field: Field  # on the working grid, mm, world axes: target point p -> atlas point p + u(p)
    warped_image: Volume
    warped_labels: Volume | None
    folding: float  # share of working-grid voxels with a non-positive Jacobian determinant

    def displacement_magnitude(self) -> Volume:
        """|u| in mm on the target's grid, for display."""
        u = self.field.sample(self.warped_image.grid)
        return self.warped_image.with_array(np.linalg.norm(u, axis=0).astype(np.float32), kind="image")

    def jacobian_determinant(self) -> Volume:
        """det(I + grad u) on the target's grid (computed on the working grid, interpolated): local volume
        change of the mapping; <= 0 marks folding."""
        det = resample_linear(self.field.jacobian_determinant(), self.field.grid, self.warped_image.grid)
        return self.warped_image.with_array(det, kind="image")


# below this share of the atlas's field of view a target is refused, below the second one warned about
MIN_COVERAGE, LOW_COVERAGE = 0.3, 0.7


def intensities(volume: Volume, grid: Grid):
    """A volume on `grid`, robustly normalised to [0, 1], as a (1, 1, X, Y, Z) float tensor.

    A volume without signal, or one that covers too little of `grid` in world space, is refused: the
    registration or segmentation would be empty or wrong without saying so.
    """
    import torch

    name = volume.path.name if volume.path else "the volume"
    if volume.array.size and volume.array.min() == volume.array.max():
        raise InputError(f"{name} has no signal: every voxel is {volume.array.flat[0]}. Check the file.")
    covered = grid.coverage(volume.grid)
    message = (
        f"{name} covers {100 * covered:.0f}% of the atlas's field of view in world coordinates: the two "
        "are not in the same space or the scan is cropped. Check their affines (origins), or align the "
        "scan to the atlas first."
    )
    if covered < MIN_COVERAGE:
        raise InputError(message)
    if covered < LOW_COVERAGE:
        warnings.warn(message, stacklevel=2)
    array = normalise_intensity(resample(volume, grid).array)
    return torch.from_numpy(np.ascontiguousarray(array))[None, None]


def encoder_features(encoder, x, config):
    """The frozen encoder's 3D feature volume of a (1, 1, X, Y, Z) tensor, as `config` (a `RegistrationSpec`)
    sets it: slicing axis, feature level, encoder input size -> (1, C, X/2, Y/2, Z/2)."""
    import torch

    from .features import volume_features

    with torch.no_grad():
        return volume_features(encoder.eval(), x[0, 0], config.axis, config.feature_level, size=config.feature_size)[
            None
        ]


def warp_layer(mode: str = "bilinear"):
    """MONAI's `Warp`: voxel displacements, border padding."""
    from monai.networks.blocks import Warp

    return Warp(mode=mode)


def registration_losses(config):
    """Image similarity (local NCC) and smoothness (diffusion) losses from MONAI."""
    from monai.losses import DiffusionLoss, LocalNormalizedCrossCorrelationLoss

    return LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=config.ncc_kernel), DiffusionLoss()


class RegistrationModel:
    """The trained registration network with its medical encoder and the atlas working grid."""

    def __init__(self, net, encoder, config, labels: list[int], grid: Grid, teacher: dict, device, state: dict) -> None:
        self.net, self.encoder, self.config = net.eval(), encoder, config
        self.labels, self.grid, self.teacher, self.device = labels, grid, teacher, device
        self.state = state  # the checkpoint without optimiser: embedded in co-training checkpoints
        self.source = "a registration model"  # its checkpoint file, once loaded from one
        self._features: OrderedDict[str, Any] = OrderedDict()  # feature volumes by input content (`_features_of`)
        self._fields: dict[tuple, Field] = {}  # pseudo-label fields already computed (co-training reruns, ablations)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> RegistrationModel:
        from .checkpoint import model_from_checkpoint

        return model_from_checkpoint(path, KIND, lambda state: cls.from_state(state, device))

    @classmethod
    def from_state(cls, state: dict, device: str = "auto") -> RegistrationModel:
        from .device import resolve_device
        from .models.registration import RegistrationSpec, build_registration

        state = {k: v for k, v in state.items() if k != "optimizer"}
        config = RegistrationSpec.from_dict(state["config"])
        net, encoder = build_registration(config, state)
        dev = resolve_device(device)
        grid = Grid.from_dict(state["grid"])
        return cls(
            net.to(dev),
            encoder.to(dev) if encoder is not None else None,
            config,
            list(state["labels"]),
            grid,
            dict(state["teacher"]),
            dev,
            state,
        )

    def features(self, x):
        """The medical encoder's 3D feature volume of a (1, 1, X, Y, Z) tensor (None without an encoder)."""
        return None if self.encoder is None else encoder_features(self.encoder, x, self.config)

    def _network_inputs(self, atlas: Volume, target: Volume):
        """The working grid, both volumes' intensities and the network's inputs (features cached for the atlas).

        Every pair is registered on the model's working grid (its first atlas's): another labelled volume, a
        further atlas, is resampled onto it in world space, as the target is."""
        grid = self.grid
        a, t = intensities(atlas, grid).to(self.device), intensities(target, grid).to(self.device)
        return grid, a, t, (a, t, self._features_of(a), self._features_of(t))

    def _features_of(self, x):
        """`features(x)`, remembered for the last `FEATURE_CACHE` inputs by content: the atlas's serve every target,
        and with several atlases (`register_atlases`) the target's serve every atlas and each atlas's every target."""
        if self.encoder is None:
            return None
        key = hashlib.sha256(x.cpu().numpy().tobytes()).hexdigest()
        if key not in self._features:
            self._features[key] = self.features(x)
            if len(self._features) > FEATURE_CACHE:
                self._features.popitem(last=False)
        self._features.move_to_end(key)
        return self._features[key]

    def forget_features(self) -> None:
        """Let go of the remembered feature volumes (`_features_of`; up to `FEATURE_CACHE` x 28 MB at the recipe's
        sizes, on the model's device), e.g. once co-training has its pseudo labels; they are computed again if
        needed."""
        self._features.clear()

    def field(self, atlas: Volume, target: Volume, refine_steps: int = REFINE_STEPS) -> Field:
        """The atlas-to-target displacement on the working grid (world mm)."""
        import torch

        grid, a, t, inputs = self._network_inputs(atlas, target)
        with torch.no_grad():
            ddf = self.net(*inputs)
        if refine_steps > 0:
            ddf = refine(ddf, a, t, self.config, refine_steps)
        return Field.from_voxels(ddf[0].cpu().numpy(), grid)

    def velocity(self, atlas: Volume, target: Volume):
        """The network's atlas-to-target output before integration, (3, X/2, Y/2, Z/2) half-resolution voxels
        of the working grid, on the CPU: `net.displacement` turns it (or a scaled / mixed one) into a field."""
        import torch

        with torch.no_grad():
            return self.net.velocity(*self._network_inputs(atlas, target)[3])[0].cpu()

    def pseudo_labels(
        self,
        atlas: Volume,
        atlas_labels: Volume,
        target: Volume,
        refine_steps: int = REFINE_STEPS,
        classes: Sequence[int] | None = None,
    ) -> np.ndarray:
        """The warped atlas labels on the working grid only (what co-training needs; no native-grid warps).

        Args:
            atlas, atlas_labels, target: the pair, as for `register`.
            refine_steps: instance optimisation steps.
            classes: None: label values (nearest neighbour); label values in class-index order (background
                first): each class's share of each voxel, (C, X, Y, Z) float16 (`warp.label_shares`: partial
                volumes of the native atlas labels).

        The field is remembered per (atlas, labels, target, refine_steps) contents for the life of this model.
        """
        atlas_labels = check_atlas(atlas, atlas_labels)
        field = self._cached_field(atlas, atlas_labels, target, refine_steps)
        if classes is not None:
            return label_shares(atlas_labels, classes, self.grid, field)
        return warp(atlas_labels, field, self.grid).array

    def _cached_field(self, atlas: Volume, atlas_labels: Volume, target: Volume, refine_steps: int) -> Field:
        """`field`, remembered per (atlas, labels, target, refine_steps) contents for the life of this model."""
        key = (
            *(
                hashlib.sha256(np.ascontiguousarray(v.array).tobytes()).hexdigest()
                for v in (atlas, atlas_labels, target)
            ),
            atlas.grid.affine.tobytes(),
            target.grid.affine.tobytes(),
            refine_steps,
        )
        if key not in self._fields:
            self._fields[key] = self.field(atlas, target, refine_steps)
        return self._fields[key]

    def fused_pseudo_labels(
        self, atlases: Sequence[tuple[Volume, Volume]], target: Volume, refine_steps: int = REFINE_STEPS
    ) -> np.ndarray:
        """Pseudo labels from several labelled volumes on the working grid: each one's warped labels
        (`pseudo_labels`) fused by the locally weighted vote (`core/fusion.py`); one volume: its warped labels.

        Args:
            atlases: (image, labels) pairs; their label sets must agree.
            target: the unlabelled volume.
            refine_steps: instance optimisation steps per pair.
        """
        from .fusion import check_label_sets, fuse, local_weights

        check_label_sets([np.unique(labels.array) for _, labels in atlases], [labels.name for _, labels in atlases])
        maps = [self.pseudo_labels(image, labels, target, refine_steps) for image, labels in atlases]
        if len(maps) == 1:
            return maps[0]
        fixed = normalise_intensity(resample(target, self.grid).array)
        warped = [
            normalise_intensity(warp(image, self._cached_field(image, labels, target, refine_steps), self.grid).array)
            for image, labels in atlases
        ]
        return fuse(maps, local_weights(fixed, warped, self.grid.spacing))

    def register(
        self, atlas: Volume, atlas_labels: Volume | None, target: Volume, refine_steps: int = REFINE_STEPS
    ) -> RegistrationResult:
        """Warp the atlas (and its labels) onto `target`; `refine_steps` > 0 adds instance optimisation."""
        if atlas_labels is not None:  # whatever fills this slot is a label map (nearest warps), checked
            atlas_labels = check_atlas(atlas, atlas_labels)
        field = self.field(atlas, target, refine_steps)
        coords = source_coordinates(field, atlas.grid, target.grid)  # shared by the image and its labels
        warped_labels = None if atlas_labels is None else warp(atlas_labels, field, target.grid, coords=coords)
        return RegistrationResult(
            field, warp(atlas, field, target.grid, coords=coords), warped_labels, field.folding_fraction()
        )

    def register_atlases(
        self,
        atlases: Sequence[tuple[Volume, Volume]],
        target: Volume,
        fusion: str = "local",
        refine_steps: int = REFINE_STEPS,
    ) -> MultiAtlasResult:
        """Register several labelled volumes onto `target` and fuse their warped labels (`core/fusion.py`).

        Args:
            atlases: (image, labels) pairs; their label sets must agree.
            target: the image to label.
            fusion: "local" (votes weighted by local image similarity) or "majority".
            refine_steps: instance optimisation steps per pair.
        """
        from .fusion import FUSIONS, check_label_sets, fuse, local_weights

        if fusion not in FUSIONS:
            raise InputError(f"fusion is one of {', '.join(FUSIONS)}, not {fusion!r}.")
        if not atlases:
            raise InputError("multi-atlas registration needs at least one labelled volume.")
        check_label_sets([np.unique(labels.array) for _, labels in atlases], [labels.name for _, labels in atlases])
        results = [self.register(image, labels, target, refine_steps) for image, labels in atlases]
        maps = [r.warped_labels.array for r in results]
        weights = None
        if fusion == "local" and len(results) > 1:
            warped = [normalise_intensity(r.warped_image.array) for r in results]
            weights = local_weights(normalise_intensity(target.array), warped, target.spacing)
        return MultiAtlasResult(target.with_array(fuse(maps, weights), kind="labels"), results)


@dataclass
class MultiAtlasResult:
    """Fused labels on the target's native grid, and each atlas's own registration."""

    labels: Volume
    results: list[RegistrationResult]


def refine(ddf, atlas, target, config, steps: int, lr: float = 0.2):
    """Instance optimisation: Adam on the working-grid displacement itself for this pair, same loss as training.

    Refining the network's half-resolution velocity instead (diffeomorphic, loss at half resolution) was
    tried and gains a third as much Dice: the gain comes from full-resolution detail (docs/benchmarks.md).
    """
    import torch

    ncc, smooth = registration_losses(config)
    warp_image = warp_layer()
    ddf = ddf.detach().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([ddf], lr=lr)
    for _ in range(steps):
        loss = ncc(warp_image(atlas, ddf), target) + config.smooth_weight * smooth(ddf)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return ddf.detach()
