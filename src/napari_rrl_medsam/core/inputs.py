"""What the 2D encoders see: square 3-channel images in [0, 1], from volume slices or photographs.

Volume slices come from the working grid (RAS, isotropic), intensity-normalised, padded to a
square (zeros, centred) and resized; grey is repeated to three channels as SAM expects.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import InputError
from .resample import normalise_intensity, to_working
from .volume import Volume

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MIN_SLICE = 16  # voxels: below this an in-plane slice carries too little for the encoder
# Photographs that scikit-image ships: the offline default for the natural-image stage.
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "page.png",
    "retina.jpg",
    "rocket.jpg",
    "text.png",
    "color.png",
)


def square_resize(images, size: int):
    """(N, C, H, W) -> (N, C, size, size): zero-pad to a centred square, then resize (antialiased)."""
    import torch.nn.functional as F

    h, w = images.shape[-2:]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    images = F.pad(images, (left, side - w - left, top, side - h - top))
    if side != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return images


def slice_indices(array: np.ndarray, axis: int, count: int | None, min_foreground: float = 0.05) -> list[int]:
    """`count` evenly spaced slice indices among the slices with some foreground (all of them if None)."""
    moved = np.moveaxis(array, axis, 0)
    fg = (moved > 0).reshape(moved.shape[0], -1).mean(axis=1)
    keep = np.nonzero(fg >= min_foreground)[0]
    if keep.size == 0:
        keep = np.arange(moved.shape[0])
    if count is None or count >= keep.size:
        return [int(i) for i in keep]
    return [int(keep[i]) for i in np.round(np.linspace(0, keep.size - 1, count)).astype(int)]


def volume_slices(volume: Volume, axis: int = 2, spacing: float = 2.0, size: int = 256, count: int | None = None):
    """Slices of `volume` on its working grid along `axis`, as a (N, 3, size, size) float32 tensor in [0, 1]."""
    import torch

    work = to_working(volume, spacing)
    in_plane = [s for i, s in enumerate(work.shape) if i != axis]
    if min(in_plane) < MIN_SLICE:
        raise InputError(
            f"{volume.name} is too small for the encoder: its slices are {in_plane[0]} x {in_plane[1]} "
            f"voxels at {spacing:g} mm, and at least {MIN_SLICE} x {MIN_SLICE} are needed. Use a finer "
            f"working spacing (e.g. {spacing * min(in_plane) / MIN_SLICE / 2:.2g} mm) or a larger volume."
        )
    array = normalise_intensity(work.array)
    idx = slice_indices(array, axis, count)
    slices = torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, axis, 0)[idx]))[:, None]
    return square_resize(slices, size).repeat(1, 3, 1, 1).clamp_(0, 1)


def natural_images(source: str | Path | Sequence[str | Path] | None = None, size: int = 256):
    """Photographs as a (N, 3, size, size) float32 tensor in [0, 1]: a folder, a list of files, or
    (None) the photographs scikit-image ships, which work offline."""
    import torch
    from PIL import Image

    if source is None:
        import skimage.data

        root = Path(skimage.data.__file__).parent
        files = [root / name for name in SKIMAGE_PHOTOS if (root / name).exists()]
    elif isinstance(source, (str, Path)) and Path(source).is_dir():
        files = sorted(p for p in Path(source).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    elif isinstance(source, (str, Path)):
        raise FileNotFoundError(f"{source}: no such folder of natural images (JPEG or PNG).")
    else:
        files = [Path(p) for p in source]
    if not files:
        raise InputError(f"no JPEG or PNG images found in {source}; give a folder of photographs.")
    out = []
    for path in files:
        try:
            with Image.open(path) as img:
                rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
            image = torch.from_numpy(rgb).permute(2, 0, 1)
        except Exception as exc:
            raise InputError(f"cannot read image {path} ({exc}); remove it or convert it to JPEG/PNG.") from exc
        h, w = image.shape[-2:]
        side = min(h, w)  # centre square crop: photographs have no meaningful border
        top, left = (h - side) // 2, (w - side) // 2
        out.append(square_resize(image[None, :, top : top + side, left : left + side], size))
    return torch.cat(out)
