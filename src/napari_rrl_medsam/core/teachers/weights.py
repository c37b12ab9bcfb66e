"""Reading teacher weight files safely (weights only) and turning every failure into an actionable InputError."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, streamed so a 375 MB checkpoint never sits in memory twice."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: Path, fix: str) -> dict[str, torch.Tensor]:
    """Load a checkpoint's state dict (also when wrapped under "model" or "state_dict")."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise InputError(f"{path} cannot be read as a PyTorch checkpoint ({type(err).__name__}): {fix}") from err
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path} holds no state dict of tensors: {fix}")
    return state


def load_image_encoder(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    path: Path,
    what: str,
    fix: str,
    prefix: str = "image_encoder.",
    assign: bool = False,
) -> nn.Module:
    """Load only the image encoder's keys (``prefix``; a bare encoder state dict works too) into ``module``."""
    encoder = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)} or state
    try:
        module.load_state_dict(encoder, strict=True, assign=assign)
    except RuntimeError as err:
        detail = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise InputError(f"{path} does not fit the {what} image encoder ({detail[:200]}): {fix}") from err
    return module
