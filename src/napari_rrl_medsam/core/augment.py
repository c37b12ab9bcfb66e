"""Random intensity augmentation of training slabs (MONAI transforms): scanner and subject appearance varies
more than one atlas and a few unlabelled volumes show (bias field, contrast, histogram, blur, noise).
Labels are untouched: these transforms change intensities only."""

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
