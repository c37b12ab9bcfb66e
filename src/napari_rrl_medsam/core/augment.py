"""Random intensity augmentation of training slabs (MONAI transforms): scanner and subject appearance varies
more than one atlas and a few unlabelled volumes show (bias field, contrast, histogram, blur, noise).
Labels are untouched: these transforms change intensities only; `structure_contrast` reads them to decide where."""

from __future__ import annotations


def intensity_augmentation():
    """A MONAI `Compose` for a (1, ...) channel-first image in [0, 1]; seed it per step with
    `set_random_state(seed)` so a resumed run draws what an uninterrupted one would."""
    from monai.transforms import (
        Compose,
        RandAdjustContrast,
        RandBiasField,
        RandGaussianNoise,
        RandGaussianSmooth,
        RandHistogramShift,
        ScaleIntensityRange,
    )

    return Compose(
        [
            RandBiasField(degree=3, coeff_range=(0.0, 0.3), prob=0.5),
            RandAdjustContrast(gamma=(0.6, 1.6), prob=0.5),
            RandHistogramShift(num_control_points=(5, 10), prob=0.3),
            RandGaussianSmooth(sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0), sigma_z=(0.25, 1.0), prob=0.2),
            RandGaussianNoise(std=0.03, prob=0.3),
            ScaleIntensityRange(0.0, 1.0, 0.0, 1.0, clip=True),
        ]
    )


def random_gamma(x, gen):
    """`x` (intensities in [0, 1]) raised to a random gamma, exp(U(-0.3, 0.3)), drawn from the generator `gen`.

    Args:
        x: an image tensor.
        gen: the step's `torch.Generator`.
    """
    import torch

    return x.clamp(0, 1) ** float(torch.exp(torch.empty(1).uniform_(-0.3, 0.3, generator=gen)))


def structure_contrast(x, target, spread: float, gen, smooth: float = 1.0):
    """Each structure of a slab shifted in intensity by its own random offset, N(0, `spread`) per class (the
    background, class 0, keeps its own): how bright a structure is against its neighbours stops being a reliable
    cue, so the model has to read shape and context too (SynthSeg's reason for random per-label contrast). On
    synthetic T1 every structure has its own calibrated intensity; real T1 does not separate the deep grey
    structures so cleanly. The offset map is blurred in-plane (Gaussian, `smooth` pixels; MONAI) so that no new
    sharp edge appears where a pseudo label's boundary misses the image's.

    Args:
        x: (K, P, Q) slab, intensities in [0, 1].
        target: its (K, P, Q) class indices, or (C, K, P, Q) class shares.
        spread: standard deviation of the offsets (intensity units of the [0, 1] image).
        gen: the step's `torch.Generator` (a resumed run draws what an uninterrupted one would).
        smooth: Gaussian sigma of the offset map, in pixels.
    """
    import torch
    from monai.transforms import GaussianSmooth

    classes = target.shape[0] if target.dim() == 4 else int(target.max()) + 1
    offsets = torch.randn(classes, generator=gen) * spread
    offsets[0] = 0
    offsets = offsets.to(x.device)
    field = torch.einsum("c,ckpq->kpq", offsets, target.float()) if target.dim() == 4 else offsets[target]
    field = GaussianSmooth(sigma=smooth)(field)  # (K, P, Q): channels K, each slice smoothed in its plane
    field = field.as_tensor() if hasattr(field, "as_tensor") else field
    return (x + field).clamp(0, 1)
