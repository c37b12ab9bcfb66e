"""SAM ViT-B's image encoder (the paper's teacher), from a user's checkpoint or the official file downloaded once."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pooch
import torch

from ..errors import InputError
from ..files import cache_dir
from .base import Teacher
from .weights import file_sha256, load_image_encoder, read_state_dict

SAM_VIT_B_URL = "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"
SAM_VIT_B_SHA256 = "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"
SAM_VIT_B_FILENAME = "sam_vit_b_01ec64.pth"
PIXEL_MEAN = (123.675, 116.28, 103.53)  # segment_anything's Sam defaults, on the 0-255 scale
PIXEL_STD = (58.395, 57.12, 57.375)
OFFLINE = (
    "give a SAM ViT-B checkpoint file (checkpoint=...), put the official one at {path}, "
    "or use the offline `litemedsam` teacher"
)


def sam_normalise(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> SAM's input: pixel mean/std normalisation on the 0-255 scale, as segment_anything does."""
    mean = images.new_tensor(PIXEL_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(PIXEL_STD).view(1, 3, 1, 1)
    return (images * 255.0 - mean) / std


def sam_vit_b_encoder(device: str | torch.device = "cpu") -> torch.nn.Module:
    """An uninitialised ViT-B image encoder with segment_anything's own hyper-parameters (89.7 M parameters)."""
    from segment_anything.modeling import ImageEncoderViT

    with torch.device(device):
        return ImageEncoderViT(
            depth=12,
            embed_dim=768,
            img_size=1024,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=12,
            patch_size=16,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=(2, 5, 8, 11),
            window_size=14,
            out_chans=256,
        )


def cached_sam_vit_b() -> Path | None:
    """The official checkpoint in the user cache folder, if it has been downloaded (or put there) before."""
    path = cache_dir() / "weights" / SAM_VIT_B_FILENAME
    return path if path.is_file() else None


def download_sam_vit_b() -> Path:
    """Fetch the official checkpoint into the cache folder; pooch checks the hash before the file appears."""
    folder = cache_dir() / "weights"
    try:
        return Path(
            pooch.retrieve(
                SAM_VIT_B_URL,
                known_hash=f"sha256:{SAM_VIT_B_SHA256}",
                fname=SAM_VIT_B_FILENAME,
                path=folder,
                progressbar=True,
            )
        )
    except Exception as err:  # network errors (requests) or a hash mismatch (ValueError)
        mismatch = isinstance(err, ValueError)
        what = "gave a file whose SHA-256 does not match (corrupted transfer)" if mismatch else "failed"
        raise InputError(
            f"downloading SAM ViT-B from {SAM_VIT_B_URL} {what}: {err}. To work offline, "
            + OFFLINE.format(path=folder / SAM_VIT_B_FILENAME)
        ) from err


def _official_checkpoint(download: bool) -> tuple[Path, str]:
    """The official file from the cache folder (checked) or freshly downloaded (pooch checked it)."""
    path = cached_sam_vit_b()
    if path is None:
        target = cache_dir() / "weights" / SAM_VIT_B_FILENAME
        if not download:
            raise InputError(
                f"no SAM ViT-B checkpoint at {target} and downloading is off: " + OFFLINE.format(path=target)
            )
        return download_sam_vit_b(), SAM_VIT_B_SHA256
    if file_sha256(path) != SAM_VIT_B_SHA256:
        raise InputError(
            f"{path} is not the official SAM ViT-B checkpoint (damaged or partial): delete it and "
            "run again to download it anew, or pass your own file as checkpoint=..."
        )
    return path, SAM_VIT_B_SHA256


FIX = "give a SAM ViT-B checkpoint (e.g. sam_vit_b_01ec64.pth or a fine-tuned one), or use the `litemedsam` teacher"


def sam_vit_b_checkpoint(checkpoint: str | Path | None = None, download: bool = True) -> tuple[Path, str]:
    """A SAM ViT-B checkpoint file and its SHA-256: the user's (any fine-tuned SAM ViT-B, e.g. MedSAM; its hash
    identifies it) or, with None, the official file from the cache folder (hash checked) or a verified download.

    Args:
        checkpoint: the user's file, or None.
        download: with None and no cached file, download the official one.
    """
    if checkpoint is None:
        return _official_checkpoint(download)
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise InputError(f"the SAM checkpoint {path} does not exist: {FIX}")
    return path, file_sha256(path)


def load_sam_vit_b(checkpoint: str | Path | None = None, device: str = "cpu", download: bool = True) -> Teacher:
    """SAM ViT-B's frozen image encoder (1024 px input, 256 x 64 x 64 embeddings).

    A user's ``checkpoint`` need not be the official file (fine-tuned SAMs such as MedSAM are welcome); its own
    SHA-256 becomes the teacher id. Without one, the official file is taken from the cache folder or downloaded.
    """
    path, sha = sam_vit_b_checkpoint(checkpoint, download)
    state = read_state_dict(path, FIX)
    encoder = load_image_encoder(sam_vit_b_encoder("meta"), state, path, "SAM ViT-B", FIX, assign=True)  # meta: no init
    return Teacher(
        encoder, "sam_vit_b", sha, input_size=1024, normalise=sam_normalise, embed_dim=256, embed_size=64, device=device
    )


def load_sam_vit_b_model(checkpoint: str | Path | None = None, download: bool = True, build=None):
    """The whole SAM ViT-B (image encoder, prompt encoder, mask decoder: box prompts) from a checkpoint as for
    `load_sam_vit_b`, loaded strictly, frozen, on the CPU; returns (model, SHA-256).

    Args:
        checkpoint: a SAM ViT-B or fine-tuned (MedSAM) checkpoint file; None: the official one.
        download: with None and no cached file, download the official one.
        build: makes the empty model (default: segment_anything's `build_sam_vit_b`).
    """
    path, sha = sam_vit_b_checkpoint(checkpoint, download)
    state = read_state_dict(path, FIX)
    if build is None:
        from segment_anything import build_sam_vit_b as build
    model = build()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise InputError(f"{path} does not fit SAM ViT-B ({str(err)[:200]}): {FIX}") from err
    return model.eval().requires_grad_(False), sha
