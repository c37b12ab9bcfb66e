"""Slice-wise 2D encoder features stacked into a 3D feature volume (how E_m's knowledge reaches 3D networks).

Each slice of the working-grid volume is padded to a square and resized to the encoder's input size
(as in distillation); the feature map of one level is resized back to the slice's own extent and
pooled by `factor`, and the stack is pooled by the same factor along the slicing axis.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .inputs import square_resize


def volume_features(
    encoder, volume: torch.Tensor, axis: int = 2, level: int = 1, factor: int = 2, size: int = 256, batch: int = 16
) -> torch.Tensor:
    """`volume` (X, Y, Z) in [0, 1] -> (C, ceil(X/f), ceil(Y/f), ceil(Z/f)) features of stage `level`.

    Gradients flow when grad is enabled (co-training); wrap in torch.no_grad() for frozen features.
    """
    moved = volume.movedim(axis, 0)  # (n_slices, h, w)
    n, h, w = moved.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    device = next(encoder.parameters()).device
    chunks = []
    for i in range(0, n, batch):
        x = square_resize(moved[i : i + batch, None].to(device), size).expand(-1, 3, -1, -1)
        f = F.interpolate(encoder.features(x)[level], size=(side, side), mode="bilinear", align_corners=False)
        f = f[:, :, top : top + h, left : left + w]
        chunks.append(F.avg_pool2d(f, factor, ceil_mode=True) if factor > 1 else f)
    stack = torch.cat(chunks)  # (n, C, h/f, w/f)
    if factor > 1:
        c, hh, ww = stack.shape[1:]
        stack = F.avg_pool1d(stack.permute(1, 2, 3, 0).reshape(1, -1, n), factor, ceil_mode=True)
        stack = stack.reshape(c, hh, ww, -1).permute(3, 0, 1, 2)
    return stack.movedim(1, 0).movedim(1, axis + 1)  # (C, n, a, b) -> (C, X, Y, Z)
