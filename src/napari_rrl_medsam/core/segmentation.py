"""RRL-MedSAM segmentation at inference: both branches on every slab of the volume, back to the native grid.

The general branch gives the auto-prompt M_g; the medical branch's auto-prompting decoder gives the
final labels. Probabilities are computed slab by slab on the atlas's working grid, brought back from
the encoder's square slice space, and the labels are returned on the input's native grid and affine
(class probabilities interpolated linearly, then the most likely class: boundaries follow the native resolution).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError
from .volume import Grid, Volume
from .warp import argmax_resampled

KIND = "rrl-medsam"
# the registration prior's weight w in (1 - w) p_k + w [prior == k], wherever a face fuses one without being told
# (+0.012 mean Dice on the OASIS-like validation set at 0.3; docs/benchmarks.md)
PRIOR_WEIGHT = 0.3


@dataclass
class SegmentationResult:
    labels: Volume  # final (medical branch) labels on the input's native grid
    auto_prompt: Volume | None  # the general branch's coarse mask M_g, same grid (None when not asked for)
    working_labels: np.ndarray  # final labels on the working grid
    registration: Any = None  # the `RegistrationResult` whose labels were the prior, when `api.segment` made one


def to_square(x, size: int):
    """(K, X, Y) slab -> (K, 3, size, size) encoder input (as in distillation)."""
    from .inputs import square_resize

    return square_resize(x[:, None], size).expand(-1, 3, -1, -1)


def labels_to_square(y, size: int):
    """(K, X, Y) class indices -> (K, size, size), same padding as `to_square`; centre-aligned nearest
    neighbour ("nearest-exact"), as the images' bilinear resize (legacy "nearest" put labels up to a pixel
    off their image)."""
    import torch.nn.functional as F

    h, w = y.shape[-2:]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    y = F.pad(y, (left, side - w - left, top, side - h - top))
    return F.interpolate(y[:, None].float(), size=(size, size), mode="nearest-exact")[:, 0].long()


def shares_to_square(y, size: int):
    """(C, K, X, Y) class shares (`warp.label_shares`) -> (C, K, size, size), resized as `to_square` resizes the
    images (bilinear); the padding is background (class 0), so every pixel's shares still sum to 1."""
    from .inputs import square_resize

    y = square_resize(y.float(), size)
    y[0] = (1 - y[1:].sum(0)).clamp(0, 1)
    return y


def from_square(p, shape: tuple[int, int]):
    """(C, K, size, size) -> (C, K, X, Y): undo the padding and resizing of `to_square`."""
    import torch.nn.functional as F

    h, w = shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    p = F.interpolate(p, size=(side, side), mode="bilinear", align_corners=False)
    return p[..., top : top + h, left : left + w]


def predict_probabilities(parts: dict, volume, config, keep_general: bool = True, dtype=None):
    """(X, Y, Z) normalised working-grid tensor -> class probabilities of both branches, (C, X, Y, Z) each (the
    general branch's None with `keep_general=False`: it still prompts the medical branch, but its mask is not
    brought back and averaged: less work where only the final labels are wanted). With `dtype` (bfloat16 or
    float16, `device.inference_dtype`) the networks run under autocast; the probabilities stay float32.

    `parts`: the encoders and decoders (`build_segmentation`); `config`: their `SegmentationSpec`. Slabs of `slab`
    slices of each of the spec's `views` (axial: along the last axis) go through both branches as in training
    (MONAI's sliding window along the slices, slabs overlapping by `slab_overlap` and averaged); the views'
    probabilities are averaged. Batch norm uses each slab's statistics when `norm_statistics` is "slab"."""
    from .configs import view_axes

    axes = view_axes(config.views)
    probs = [_view_probabilities(parts, volume, config, axis, keep_general, dtype) for axis in axes]
    if len(probs) == 1:
        return probs[0]
    return tuple(None if probs[0][b] is None else sum(p[b] for p in probs) / len(probs) for b in range(2))


def _view_probabilities(parts: dict, volume, config, axis: int, keep_general: bool = True, dtype=None):
    """Both branches' probabilities (C, X, Y, Z) from slabs of the slices across voxel axis `axis` (the general
    branch's None without `keep_general`; autocast to `dtype` unless None)."""
    from contextlib import nullcontext

    import torch
    from monai.inferers import sliding_window_inference

    from .models.segmentation import branch_logits, slab_statistics

    general, medical = parts["general"], parts["medical"]
    x = volume.movedim(axis, 0)[None, None]  # the view's slices first: (1, 1, K, P, Q)
    shape = tuple(x.shape[3:])

    def branches(window):
        s = to_square(window[0, 0], config.image_size)
        with torch.autocast(s.device.type, dtype=dtype, enabled=dtype is not None):
            _, probs_g, logits_m = branch_logits(parts, s, config.use_prompt)
        final = from_square(torch.softmax(logits_m.float(), 1)[0], shape)[None]
        return (from_square(probs_g[0].float(), shape)[None], final) if keep_general else final

    norm = slab_statistics(general, medical) if config.norm_statistics == "slab" else nullcontext()
    with torch.no_grad(), norm:
        out = sliding_window_inference(x, (config.slab, *shape), 1, branches, overlap=(config.slab_overlap, 0, 0))
    probs_g, probs_m = out if keep_general else (None, out)
    return None if probs_g is None else probs_g[0].movedim(1, axis + 1), probs_m[0].movedim(1, axis + 1)


def left_right_axis(grid: Grid) -> int:
    """The voxel axis of `grid` closest to the world's left-right (x) direction."""
    return int(np.argmax(np.abs(grid.affine[0, :3])))


def mirror_index(pairs: Sequence[tuple[int, int]], classes: list[int]) -> np.ndarray:
    """Class index -> the class index of its mirror structure, from (left, right) label-value pairs.

    Args:
        pairs: (left, right) label values; a value the model does not segment is passed over.
        classes: the model's label values by class index.
    """
    swap = np.arange(len(classes))
    index = {v: i for i, v in enumerate(classes)}
    seen: set[int] = set()
    for pair in pairs:
        if len(pair) != 2 or pair[0] == pair[1] or seen & set(pair):
            raise InputError(
                f"mirror pairs are (left, right) label values, each value in one pair at most; {tuple(pair)} is not."
            )
        seen |= set(pair)
        if pair[0] in index and pair[1] in index:
            a, b = index[pair[0]], index[pair[1]]
            swap[a], swap[b] = b, a
    return swap


def mirror_averaged(parts: dict, volume, config, axis: int, swap: np.ndarray, keep_general: bool = True, dtype=None):
    """Both branches' probabilities (C, X, Y, Z), averaged with those of the volume's mirror image along `axis`
    (flipped back, left and right classes exchanged by `swap`, from `mirror_index`): test-time mirroring.
    `keep_general` and `dtype` as in `predict_probabilities`."""
    import torch

    own = predict_probabilities(parts, volume, config, keep_general, dtype)
    seen = predict_probabilities(parts, volume.flip(axis), config, keep_general, dtype)
    index = torch.as_tensor(swap, device=own[1].device)
    return tuple(None if p is None else (p + q.flip(axis + 1)[index]) / 2 for p, q in zip(own, seen))


class SegmentationModel:
    """A co-trained RRL-MedSAM model: encoders, decoders, label table and its registration model.

    `precision` ("auto", "float32", "bfloat16", "float16"; `device.inference_dtype`) is the networks' arithmetic at
    prediction: "auto" is bfloat16 where the hardware computes it natively, float32 elsewhere.
    """

    def __init__(
        self,
        parts: dict,
        config,
        classes: list[int],
        grid: Grid,
        registration,
        teacher: dict,
        device,
        precision: str = "auto",
    ) -> None:
        self.parts, self.config, self.classes = parts, config, classes
        self.grid, self.registration, self.teacher, self.device = grid, registration, teacher, device
        self.precision = precision
        self.source = "a co-trained model"  # its checkpoint file, once loaded from one

    @property
    def precision(self) -> str:
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        from .device import inference_dtype

        self.dtype = inference_dtype(self.device, value)  # the autocast type (None: float32); checks the name
        self._precision = value

    @classmethod
    def load(cls, path, device: str = "auto", precision: str = "auto") -> SegmentationModel:
        from .checkpoint import model_from_checkpoint

        return model_from_checkpoint(path, KIND, lambda state: cls.from_state(state, device, precision))

    @classmethod
    def from_state(cls, state: dict, device: str = "auto", precision: str = "auto") -> SegmentationModel:
        """The model a co-training checkpoint's contents (`load_checkpoint`) describe, on `device`, predicting in
        `precision`."""
        from .device import resolve_device
        from .models.encoder import EncoderConfig
        from .models.segmentation import SegmentationSpec, build_segmentation
        from .registration import RegistrationModel

        dev = resolve_device(device)
        config = SegmentationSpec.from_dict(state["config"])
        parts = build_segmentation(config, EncoderConfig.from_dict(state["encoder_config"]), len(state["classes"]))
        for name, module in parts.items():
            module.load_state_dict(state["parts"][name])
            module.to(dev).eval()
        grid = Grid.from_dict(state["grid"])
        registration = RegistrationModel.from_state(state["registration"], device)
        teacher = dict(state["teacher"])
        return cls(parts, config, list(state["classes"]), grid, registration, teacher, dev, precision)

    def register(self, *args, **kwargs):
        """The co-trained model's registration (see `RegistrationModel.register`)."""
        return self.registration.register(*args, **kwargs)

    def register_atlases(self, *args, **kwargs):
        """`RegistrationModel.register_atlases` with the registration this model was trained with."""
        return self.registration.register_atlases(*args, **kwargs)

    def working_labels(
        self, volume: Volume, prior: np.ndarray | None = None, prior_weight: float = PRIOR_WEIGHT
    ) -> np.ndarray:
        """Final label values of `volume` on the working grid (no native-grid resampling).

        Args:
            volume: the image to segment.
            prior: optional label values on the working grid (e.g. the registration's pseudo labels), fused
                with the AP decoder's probabilities as in `segment`: (1 - w) p_k + w [prior == k].
            prior_weight: w, between 0 and 1.
        """
        from .registration import intensities

        prior_index = None if prior is None else self._prior_index(prior, prior_weight)
        for module in self.parts.values():
            module.eval()
        x = intensities(volume, self.grid)[0, 0].to(self.device)
        probs = predict_probabilities(self.parts, x, self.config, False, self.dtype)[1].cpu().numpy()
        return np.array(self.classes)[
            argmax_resampled(probs, self.grid, self.grid, prior=prior_index, prior_weight=prior_weight)
        ].astype(np.int32)

    def _prior_index(self, labels: np.ndarray, prior_weight: float) -> np.ndarray:
        """A prior's label values -> class indices of this model (-1: a value the model lacks: no vote)."""
        if not 0 <= prior_weight <= 1:
            raise InputError(f"prior_weight must be between 0 and 1, not {prior_weight}.")
        lut = np.array(self.classes)
        index = np.full(int(max(labels.max(), lut.max())) + 1, -1, np.int64)
        index[lut] = np.arange(len(lut))
        return index[np.clip(labels, 0, None).astype(np.int64)]

    def segment(
        self,
        volume: Volume,
        prior: Volume | None = None,
        prior_weight: float = PRIOR_WEIGHT,
        mirror: Sequence[tuple[int, int]] | None = None,
        auto_prompt: bool = True,
    ) -> SegmentationResult:
        """Final labels and the auto-prompt mask of `volume`, on its native grid and affine; voxels outside the
        image's foreground (`resample.foreground`: the head / body) are never labelled.

        Args:
            volume: the image to segment.
            prior: an optional label map of `volume` (e.g. the registration's warped atlas labels) fused with the
                AP decoder's probabilities, (1 - w) p_k + w [prior == k]; the auto-prompt mask stays the
                network's own.
            prior_weight: w, between 0 and 1.
            mirror: (left, right) label-value pairs (e.g. `FREESURFER_LEFT_RIGHT`) for test-time mirroring: the
                volume's left-right mirror image is segmented too and the probabilities averaged, each pair's
                labels exchanged. Twice the network's time; for left-right symmetric anatomy such as the brain.
            auto_prompt: also bring the auto-prompt mask onto the native grid (False: `.auto_prompt` is None, and
                the native-grid arg-max runs once, not twice).
        """
        import torch

        from .registration import intensities
        from .resample import foreground, resample

        x = intensities(volume, self.grid)[0, 0].to(self.device)
        p = self.parts
        for module in p.values():
            module.eval()
        swap = None if mirror is None else mirror_index(mirror, self.classes)
        probs_g, probs_m = (
            predict_probabilities(p, x, self.config, auto_prompt, self.dtype)
            if swap is None
            else mirror_averaged(p, x, self.config, left_right_axis(self.grid), swap, auto_prompt, self.dtype)
        )
        lut = np.array(self.classes)
        prior_index = None
        if prior is not None:
            prior = prior if prior.grid.same_as(volume.grid) else resample(prior, volume.grid, order=0)
            prior_index = self._prior_index(prior.array, prior_weight)
        inside = foreground(x.cpu().numpy())  # nothing is labelled outside the head / body
        native = resample(Volume(inside.astype(np.uint8), self.grid.affine, "labels"), volume.grid).array > 0

        def on_native_grid(probs, fuse, coarse=None) -> Volume:
            index = argmax_resampled(
                probs.cpu().numpy(), self.grid, volume.grid, prior=fuse, prior_weight=prior_weight, coarse=coarse
            )
            return Volume(np.where(native, lut[index], 0).astype(np.int32), volume.affine, "labels")

        coarse = torch.argmax(probs_m, 0).cpu().numpy()  # the working grid's labels, and the native grid's start
        labels = on_native_grid(probs_m, prior_index, coarse)
        auto = on_native_grid(probs_g, None) if auto_prompt else None
        working = np.where(inside, lut[coarse], 0).astype(np.int32)
        return SegmentationResult(labels, auto, working)
