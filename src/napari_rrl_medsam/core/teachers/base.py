"""The one interface every teacher has, so distillation and the cache never care which SAM-family encoder runs."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..device import resolve_device
from ..errors import InputError

Normalise = Callable[[torch.Tensor], torch.Tensor]


class Teacher:
    """A frozen 2D image encoder that maps (B, 3, H, W) float images in [0, 1] to SAM-style embeddings.

    Any nn.Module can be wrapped (tests use tiny random ones). The module is frozen (eval mode, no gradients)
    because a teacher's embeddings are fixed targets, which is also what makes them cacheable.
    """

    def __init__(
        self,
        module: nn.Module,
        name: str,
        weights_sha256: str,
        input_size: int,
        normalise: Normalise | None = None,
        embed_dim: int | None = None,
        embed_size: int | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.module = module.eval().requires_grad_(False)
        self.name = name
        self.weights_sha256 = weights_sha256
        self.input_size = int(input_size)
        self.normalise = normalise
        self.device = torch.device("cpu")
        self.to(device)
        if embed_dim is None or embed_size is None:  # one dry forward tells the output shape
            out = self.encode(torch.zeros(1, 3, self.input_size, self.input_size))
            embed_dim, embed_size = out.shape[1], out.shape[-1]
        self.embed_dim = int(embed_dim)
        self.embed_size = int(embed_size)

    @property
    def id(self) -> str:
        """Names both the architecture and the exact weights: used in cache keys and saved models."""
        return f"{self.name}-{self.weights_sha256[:12]}"

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def to(self, device: str | torch.device) -> Teacher:
        self.device = resolve_device(device)
        self.module.to(self.device)
        return self

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1], any square size S -> (B, embed_dim, embed_size, embed_size) float32.

        Resizes to the encoder's own input size (bilinear, antialiased) and applies its own normalisation.
        """
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
            raise InputError(
                f"teacher '{self.name}' needs square (B, 3, S, S) images, got shape {tuple(images.shape)}: "
                "repeat a grey slice to 3 channels and pad it to a square first"
            )
        x = images.to(self.device, torch.float32)
        if x.shape[-1] != self.input_size:
            size = (self.input_size, self.input_size)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        if self.normalise is not None:
            x = self.normalise(x)
        return self.module(x).float()

    def __repr__(self) -> str:
        return f"Teacher({self.id}, input {self.input_size}, embeddings {self.embed_dim}x{self.embed_size}^2)"
