"""The registration network R: atlas + target -> dense 3D displacement field (voxel units).

A small 3D U-Net (MONAI convolution blocks) on the two intensity volumes; at half resolution it also
sees the medical encoder's slice features of both volumes (projected to a few channels), which is
how SAM-guided knowledge enters registration. With `diffeomorphic`, the network predicts a
stationary velocity field integrated by scaling and squaring (MONAI `DVF2DDF`). The field is predicted
and integrated at half resolution, then upsampled (as VoxelMorph does): smooth fields lose nothing and
training runs about three times faster on a CPU.

`RegistrationSpec` (core/configs.py) holds what shapes the network and its inputs (and the objective instance
optimisation continues); `build_registration(spec, state)` rebuilds the network and its frozen medical encoder
from it, for inference and training alike (the training engine's config extends the spec with its training-only
fields).
"""

from __future__ import annotations

import torch
from monai.networks.blocks import DVF2DDF, Convolution
from torch import nn
from torch.nn import functional as F

from ..configs import EncoderConfig, RegistrationConfig, RegistrationSpec
from ..errors import InputError
from .encoder import LightEncoder


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Module:
    return Convolution(
        3, cin, cout, strides=stride, kernel_size=3, act=("leakyrelu", {"negative_slope": 0.2}), norm=None
    )


class RegistrationNet(nn.Module):
    def __init__(self, config: RegistrationConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or RegistrationConfig()
        ch = c.channels
        self.down = nn.ModuleList([_conv(2, ch[0])] + [_conv(ch[i - 1], ch[i], 2) for i in range(1, len(ch))])
        extra = 2 * c.feature_projection if c.feature_channels else 0
        self.project = nn.Conv3d(c.feature_channels, c.feature_projection, 1) if c.feature_channels else None
        self.fuse = _conv(ch[1] + extra, ch[1])
        self.up = nn.ModuleList(_conv(ch[i] + ch[i - 1], ch[i - 1]) for i in range(len(ch) - 1, 1, -1))
        self.head = nn.Conv3d(ch[1], 3, 3, padding=1)
        nn.init.normal_(self.head.weight, std=1e-5)
        nn.init.zeros_(self.head.bias)
        self.integrate = DVF2DDF(c.integration_steps) if c.diffeomorphic else None

    def forward(
        self,
        atlas: torch.Tensor,
        target: torch.Tensor,
        atlas_features: torch.Tensor | None = None,
        target_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, 1, X, Y, Z) each (+ (B, F, X/2, Y/2, Z/2) features) -> displacement (B, 3, X, Y, Z) in voxels."""
        return self.displacement(self.velocity(atlas, target, atlas_features, target_features), atlas.shape[2:])

    def velocity(
        self,
        atlas: torch.Tensor,
        target: torch.Tensor,
        atlas_features: torch.Tensor | None = None,
        target_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The network's output before integration: (B, 3, X/2, Y/2, Z/2), in half-resolution voxels (a
        stationary velocity field with `diffeomorphic`, else the displacement itself)."""
        x = torch.cat([atlas, target], 1)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i == 1 and self.project is not None:
                if atlas_features is None or target_features is None:
                    raise ValueError("this registration network was built to use encoder features; pass them")
                feats = [
                    F.interpolate(self.project(f), size=x.shape[2:], mode="trilinear", align_corners=False)
                    for f in (atlas_features, target_features)
                ]
                x = self.fuse(torch.cat([x, *feats], 1))
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[1:-1])):
            x = F.interpolate(x, size=skip.shape[2:], mode="trilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return self.head(x)

    def displacement(self, flow: torch.Tensor, size) -> torch.Tensor:
        """Half-resolution network output (`velocity`) -> displacement (B, 3, *size) in full-resolution voxels:
        integrated by scaling and squaring if `diffeomorphic`, then upsampled."""
        return displacement(flow, size, self.integrate)


def displacement(flow: torch.Tensor, size, integrate: nn.Module | None) -> torch.Tensor:
    """A half-resolution output (B, 3, x, y, z) -> displacement (B, 3, *size) in full-resolution voxels.

    Args:
        flow: velocity (or displacement) in half-resolution voxels.
        size: the full-resolution spatial shape.
        integrate: MONAI `DVF2DDF` (scaling and squaring) for a velocity, None for a displacement.
    """
    if integrate is not None:
        flow = integrate(flow)
    # a half-resolution voxel is size / half-size full-resolution voxels along each axis: 2 for even sizes,
    # 73 / 37 for 73 (a plain factor 2 would stretch odd axes by up to a few percent)
    scale = torch.tensor([s / h for s, h in zip(size, flow.shape[2:])], dtype=flow.dtype, device=flow.device)
    return F.interpolate(flow, size=tuple(size), mode="trilinear", align_corners=False) * scale.view(1, 3, 1, 1, 1)


def build_registration(spec: RegistrationSpec, state: dict | None = None, encoder: LightEncoder | None = None):
    """The registration network and the frozen medical encoder (None without features).

    Args:
        spec: the model's spec; its `network.feature_channels` is set from the encoder.
        state: a registration checkpoint (weights, encoder and its config), or None for new weights.
        encoder: the encoder whose weights E_m starts from when there is no `state`.
    """
    encoder_config = (
        EncoderConfig.from_dict(state["encoder_config"])
        if state and state.get("encoder_config")
        else encoder.config
        if encoder is not None
        else None
    )
    if spec.use_features:
        if encoder_config is None:
            raise InputError(
                "registration with encoder features needs an encoder (the shipped one, or a distilled one)."
            )
        spec.network.feature_channels = encoder_config.channels[spec.feature_level]
    else:
        spec.network.feature_channels = 0
    net = RegistrationNet(spec.network)
    medical = None
    if spec.use_features:
        medical = LightEncoder(encoder_config)
        medical.load_state_dict(state["encoder"] if state else encoder.state_dict())
        medical.teacher = dict(state["teacher"]) if state else dict(getattr(encoder, "teacher", {}))
        medical.eval().requires_grad_(False)
    if state is not None:
        net.load_state_dict(state["network"])
    return net, medical
