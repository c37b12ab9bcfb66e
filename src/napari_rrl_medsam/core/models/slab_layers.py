"""Layers of the slab decoders that compute exactly what PyTorch's 3D layers compute, faster on CPU.

A slab is a few (8) axial slices of S x S pixels with batch 1. On CPU, PyTorch's 3D convolution takes a
generic im2col path for such inputs below about 48 x 48 pixels per slice, and its backward pass is slow at
every size: a 3 x 3 x 3 convolution of 64 -> 32 channels on 8 slices took, forward and backward on our 2 cores,
203 ms at 32 x 32 px and 403 ms at 96 x 96 px, against 33 ms and 304 ms as the sum of three 2D convolutions,
one per kernel depth, over the slices shifted by one (`benchmarks/slab_layers.py`). Upsampling
in the slice plane is likewise cheaper as 2D bilinear than as trilinear with a scale of 1 across slices.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# forward only (inference), PyTorch's own 3D convolution is the faster from this many pixels per slice
NATIVE_FORWARD_FROM = 48 * 48


class SliceConv3d(nn.Conv3d):
    """`nn.Conv3d` with kernel 3, padding 1, stride 1 (same parameters, same function) computed on CPU as the
    sum of three 2D convolutions over the slices, one per kernel depth, each slice seeing its lower, own and
    upper neighbour (zero slices beyond the ends, as the 3D convolution's padding). Left to PyTorch on other
    devices and, without gradients, for slices of 48 x 48 pixels or more."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, k, h, w = x.shape
        if x.device.type != "cpu" or (not torch.is_grad_enabled() and h * w >= NATIVE_FORWARD_FROM):
            return super().forward(x)
        padded = F.pad(x.movedim(2, 1), (0, 0, 0, 0, 0, 0, 1, 1))  # (B, K + 2, C, H, W)
        y = sum(
            F.conv2d(
                padded[:, d : d + k].reshape(b * k, c, h, w),
                self.weight[:, :, d],
                self.bias if d == 0 else None,
                padding=1,
            )
            for d in range(3)
        )
        return y.reshape(b, k, self.out_channels, h, w).movedim(1, 2)


def slice_conv(conv: nn.Conv3d) -> SliceConv3d:
    """The same convolution (its very parameters, no new random draws) as a `SliceConv3d`."""
    if (conv.kernel_size, conv.padding, conv.stride, conv.dilation, conv.groups, conv.padding_mode) != (
        (3, 3, 3),
        (1, 1, 1),
        (1, 1, 1),
        (1, 1, 1),
        1,
        "zeros",
    ):
        raise ValueError("slice_conv takes a 3 x 3 x 3 convolution with padding 1, stride 1, one group.")
    fast = torch.nn.utils.skip_init(
        SliceConv3d,
        conv.in_channels,
        conv.out_channels,
        3,
        padding=1,
        bias=conv.bias is not None,
        device=conv.weight.device,
    )
    fast.weight, fast.bias = conv.weight, conv.bias
    return fast


def resize_in_plane(x: torch.Tensor, size: tuple[int, int] | None = None, scale: float | None = None) -> torch.Tensor:
    """(B, C, K, H, W) -> (B, C, K, *size), or H and W times `scale`: bilinear within each slice (half-pixel
    centres), which is what trilinear interpolation gives when the number of slices stays the same."""
    b, c, k = x.shape[:3]
    y = F.interpolate(
        x.movedim(2, 1).reshape(b * k, c, *x.shape[3:]),
        size=size,
        scale_factor=scale,
        mode="bilinear",
        align_corners=False,
    )
    return y.reshape(b, k, c, *y.shape[2:]).movedim(1, 2)
