"""The lightweight general encoder E_g (and, by the same architecture, the medical encoder E_m).

A small 2D CNN (MONAI residual units) that sees a slice at 256 x 256 and gives
- multi-scale features at strides 2, 4, 8 and 16 for the 3D decoders, and
- an embedding head matching the teacher's embedding: `embed_dim` channels on the teacher's
  grid (64 x 64 for a 256 input, stride 4), fused from all scales like a small FPN.
The default configuration has 2,557,376 parameters (2.85%), under the 3% of SAM ViT-B's image encoder
(89.67 M -> 2.69 M) that the method allows.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn
from torch.nn import functional as F

from ..configs import EncoderConfig

SAM_VIT_B_ENCODER_PARAMS = 89_670_912
MAX_PARAMS = int(0.03 * SAM_VIT_B_ENCODER_PARAMS)


class LightEncoder(nn.Module):
    """2D CNN encoder: `features(x)` -> list of multi-scale maps; `forward(x)` -> teacher-like embedding."""

    def __init__(self, config: EncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or EncoderConfig()
        stages, prev = [], config.in_channels
        for i, ch in enumerate(config.channels):
            stages.append(
                nn.Sequential(
                    Convolution(2, prev, ch, strides=2, kernel_size=3, norm="batch", act="relu"),
                    ResidualUnit(2, ch, ch, subunits=2 if i else 1, norm="batch", act="relu"),
                )
            )
            prev = ch
        self.stages = nn.ModuleList(stages)
        # FPN-like neck: every scale projected to neck_channels, brought to stride 4 and summed.
        self.lateral = nn.ModuleList(nn.Conv2d(ch, config.neck_channels, 1) for ch in config.channels[1:])
        self.head = nn.Sequential(
            Convolution(2, config.neck_channels, config.neck_channels, kernel_size=3, norm="batch", act="relu"),
            nn.Conv2d(config.neck_channels, config.embed_dim, 1),
        )

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps at strides 2, 4, 8, 16 (channels `config.channels`)."""
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out

    def embed(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """The teacher-like embedding (stride 4) from the multi-scale features."""
        size = feats[1].shape[-2:]
        fused = sum(
            F.interpolate(lat(f), size=size, mode="bilinear", align_corners=False) if i else lat(f)
            for i, (lat, f) in enumerate(zip(self.lateral, feats[1:]))
        )
        return self.head(fused)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.features(x))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
