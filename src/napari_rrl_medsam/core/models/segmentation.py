"""The two segmentation branches of RRL-MedSAM on slabs of consecutive slices.

- general branch: E_g's multi-scale slice features, stacked along the slab, -> `SlabDecoder` -> coarse mask
  M_g (the auto-prompt);
- medical branch: E_m's features -> `APDecoder`: the same decoder whose stride-4 features receive M_g as a
  dense mask prompt, downsampled and embedded the way SAM's prompt encoder embeds a mask (two stride-2
  convolutions with channel LayerNorm and GELU, then a 1x1 projection), and added.

Slices keep their own resolution through the 2D encoder; 3D convolutions (kernel 3 across slices) mix
neighbouring slices, upsampling is in-plane only. With `full_resolution` each decoder adds to its logits (from
stride 2, upsampled) a correction computed at the slices' own resolution from the image itself (the encoder's
first level is at stride 2). Inputs and outputs live in the encoder's square slice space (S x S per slice).

`SegmentationSpec` (core/configs.py) holds what shapes the decoders and how the model sees a volume (slab, slice
size, batch-norm statistics); `build_segmentation(spec, ...)` makes the four parts, for inference and training
alike (the co-training engine's config extends the spec with its training-only fields).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from monai.networks.blocks import Convolution
from torch import nn

from ..configs import EncoderConfig, SegmentationSpec
from .encoder import LightEncoder
from .slab_layers import resize_in_plane, slice_conv


def slab_features(encoder, slab: torch.Tensor) -> list[torch.Tensor]:
    """(K, 3, S, S) slices -> per level (1, C_l, K, S/2^(l+1), S/2^(l+1)): features stacked along the slab."""
    return [f.movedim(0, 1)[None] for f in encoder.features(slab)]


def branch_logits(parts: dict, slab: torch.Tensor, use_prompt: bool = True):
    """Both branches on one slab, as training and prediction run them.

    Args:
        parts: the four parts (`build_segmentation`).
        slab: (K, 3, S, S) encoder input.
        use_prompt: the AP decoder gets the general branch's mask (detached) as its prompt.

    Returns:
        (general logits, general probabilities, AP logits), each (1, C, K, S, S).
    """
    image = slab[:, :1].movedim(0, 1)[None]  # (1, 1, K, S, S): the grey slices for the full-resolution stage
    logits_g = parts["decoder_g"](slab_features(parts["general"], slab), image=image)
    probs_g = torch.softmax(logits_g, 1)
    prompt = probs_g.detach() if use_prompt else None
    return logits_g, probs_g, parts["ap"](slab_features(parts["medical"], slab), prompt, image=image)


def _block(cin: int, cout: int) -> nn.Module:
    block = Convolution(3, cin, cout, kernel_size=3, norm="instance", act="leakyrelu")
    block.conv = slice_conv(block.conv)  # the same convolution, faster on CPU (see slab_layers)
    return block


class FullResolutionStage(nn.Module):
    """A correction of the decoder's logits at the slices' own resolution: the stride-2 features, upsampled,
    and the grey image (B, 1, K, S, S) -> two in-plane 3 x 3 convolutions per slice (instance norm, leaky
    ReLU) -> class logits added to the upsampled ones. The last convolution starts at zero, so a new stage
    starts as the decoder without it and learns where the image moves a boundary. In-plane only: the slab's
    depth is mixed at the coarser levels."""

    def __init__(self, width: int, n_classes: int, hidden: int = 16) -> None:
        super().__init__()
        out = nn.Conv2d(hidden, n_classes, 1)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.net = nn.Sequential(
            Convolution(2, width + 1, hidden, kernel_size=3, norm="instance", act="leakyrelu"),
            Convolution(2, hidden, hidden, kernel_size=3, norm="instance", act="leakyrelu"),
            out,
        )

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = torch.cat([resize_in_plane(x, size=image.shape[3:]), image.to(x.dtype)], 1)
        b, c, k, h, w = x.shape
        y = self.net(x.movedim(2, 1).reshape(b * k, c, h, w))
        return y.reshape(b, k, -1, h, w).movedim(1, 2)


class SlabDecoder(nn.Module):
    """U-Net decoder from the 4 encoder levels (strides 2..16) to class logits at full slice resolution: logits
    at stride 2, upsampled, plus (`full_resolution`) a correction at full resolution that also sees the image
    (`FullResolutionStage`)."""

    def __init__(
        self, encoder_channels: tuple[int, ...], n_classes: int, width: int = 32, full_resolution: bool = False
    ) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv3d(c, width, 1) for c in encoder_channels)
        self.fuse = nn.ModuleList(_block(2 * width, width) for _ in encoder_channels[:-1])
        self.head = nn.Conv3d(width, n_classes, 1)
        self.full = FullResolutionStage(width, n_classes) if full_resolution else None

    def forward(
        self,
        feats: list[torch.Tensor],
        prompt: torch.Tensor | None = None,
        prompt_level: int = 1,
        image: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Class logits (B, C, K, S, S); `image` (B, 1, K, S, S), the slab's grey slices, is needed (and only
        read) with a full-resolution stage."""
        lat = [conv(f) for conv, f in zip(self.lateral, feats)]
        if prompt is not None:
            lat[prompt_level] = lat[prompt_level] + prompt
        x = lat[-1]
        for level in range(len(lat) - 2, -1, -1):
            x = resize_in_plane(x, size=lat[level].shape[3:])
            x = self.fuse[level](torch.cat([x, lat[level]], 1))
        logits = resize_in_plane(self.head(x), scale=2)  # from stride 2
        if self.full is None:
            return logits
        if image is None:
            raise ValueError("this decoder has a full-resolution stage: pass the slab's image (B, 1, K, S, S).")
        return logits + self.full(x, image)


class ChannelNorm3d(nn.Module):
    """LayerNorm over channels at each position (SAM's LayerNorm2d, for 3D tensors)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


class MaskPromptEncoder(nn.Module):
    """SAM's dense mask-prompt embedding, per slice: (B, n_classes, K, S, S) probabilities -> (B, dim, K, S/4, S/4)."""

    def __init__(self, n_classes: int, dim: int, hidden: int = 16) -> None:
        super().__init__()
        k = (1, 2, 2)
        self.net = nn.Sequential(
            nn.Conv3d(n_classes, hidden // 4, k, stride=k),
            ChannelNorm3d(hidden // 4),
            nn.GELU(),
            nn.Conv3d(hidden // 4, hidden, k, stride=k),
            ChannelNorm3d(hidden),
            nn.GELU(),
            nn.Conv3d(hidden, dim, 1),
        )

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        return self.net(mask)


class APDecoder(nn.Module):
    """The auto-prompting decoder: E_m features + the embedded general-branch mask -> final logits.

    With `residual`, the prompt is also a prior on the output: logits + log M_g, so the decoder starts from
    the general branch's mask and learns a correction of it (otherwise it must first learn to read the prompt).
    """

    def __init__(
        self,
        encoder_channels: tuple[int, ...],
        n_classes: int,
        width: int = 32,
        use_prompt: bool = True,
        residual: bool = False,
        full_resolution: bool = False,
    ) -> None:
        super().__init__()
        self.decoder = SlabDecoder(encoder_channels, n_classes, width, full_resolution)
        self.prompt = MaskPromptEncoder(n_classes, width) if use_prompt else None
        self.residual = residual and use_prompt

    def forward(
        self, feats: list[torch.Tensor], mask_probs: torch.Tensor | None, image: torch.Tensor | None = None
    ) -> torch.Tensor:
        prompt = None
        if self.prompt is not None and mask_probs is not None:
            prompt = self.prompt(mask_probs)
            prompt = resize_in_plane(prompt, size=feats[1].shape[3:])
        logits = self.decoder(feats, prompt, prompt_level=1, image=image)
        if self.residual and mask_probs is not None:
            logits = logits + torch.log(mask_probs.clamp_min(1e-4))
        return logits


@contextmanager
def slab_statistics(*modules: nn.Module) -> Iterator[None]:
    """Within the block, batch-norm layers normalise with the statistics of the slab at hand, as they did in
    training (each step is one slab), instead of their running averages, which stay untouched."""
    norms = [m for module in modules for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.track_running_stats) for m in norms]
    try:
        for m in norms:
            m.training, m.track_running_stats = True, False
        yield
    finally:
        for m, (training, track) in zip(norms, saved):
            m.training, m.track_running_stats = training, track


@torch.no_grad()
def mutual_ema(general: nn.Module, medical: nn.Module, alpha: float = 0.99) -> None:
    """Exchange weights between the two encoders, both from their values before the call:
    theta_g <- a theta_g + (1 - a) theta_m and theta_m <- a theta_m + (1 - a) theta_g.

    Floating-point parameters and buffers (batch-norm statistics) are averaged; integer buffers
    (batch counters) are left alone.
    """
    g_state, m_state = general.state_dict(), medical.state_dict()
    for name, g in g_state.items():
        if not g.is_floating_point():
            continue
        m = m_state[name]
        g_old = g.clone()
        g.mul_(alpha).add_(m, alpha=1 - alpha)
        m.mul_(alpha).add_(g_old, alpha=1 - alpha)


def build_segmentation(
    spec: SegmentationSpec, encoder_config: EncoderConfig, n_classes: int, general_state: dict | None = None
) -> dict[str, nn.Module]:
    """The four parts: E_g, E_m (a copy of E_g), the general decoder and the AP decoder.

    Args:
        spec: the model's spec.
        encoder_config: the encoders' architecture.
        n_classes: classes including the background.
        general_state: weights of E_g (the distilled encoder), or None for new ones.
    """
    general = LightEncoder(encoder_config)
    if general_state is not None:
        general.load_state_dict(general_state)
    return {
        "general": general,
        "medical": copy.deepcopy(general),
        "decoder_g": SlabDecoder(encoder_config.channels, n_classes, spec.decoder_width, spec.full_resolution),
        "ap": APDecoder(
            encoder_config.channels,
            n_classes,
            spec.decoder_width,
            spec.use_prompt,
            spec.prompt_residual,
            spec.full_resolution,
        ),
    }
