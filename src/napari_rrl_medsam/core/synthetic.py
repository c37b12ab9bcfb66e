"""Exact synthetic training pairs (DESIGN 5b; Brainstorm, BRBS, IST): the atlas image and the atlas labels
warped by the SAME sampled field, the image given the appearance of an unlabelled volume.

Fields come from the registration network's atlas -> unlabelled outputs (half-resolution stationary velocities,
computed once): each draw mixes two volumes' velocities, v = a v_i + (1 - a) v_j ("mix"), or scales one,
v = a v_i ("scale"), with a ~ Beta(b, b) (BRBS: b = 0.3), and integrates v by scaling and squaring as the network
does, so sampled fields stay diffeomorphic. Labels are warped by nearest neighbour (class indices stay exact).
The appearance source j' is drawn independently of the field source (Brainstorm: independent beat coupled):

- "style" (BRBS): the style offset S = U warped to atlas space (by the inverse field, exp(-v)) - A, computed
  once per unlabelled volume; image = (A + c S) o phi, c ~ Beta(b, b);
- "fourier" (IST): the warped atlas with its Fourier amplitude mixed with the unlabelled volume's,
  |F| = (1 - L) |F(warped A)| + L |F(U)|, L ~ U(0, 1), phase of the warped atlas;
- "none": the warped atlas as it is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .configs import APPEARANCES, FIELD_MODES


class SyntheticPairs:
    """Draws exact (image, class-index) pairs on the working grid.

    Args:
        atlas: (X, Y, Z) normalised atlas intensities on the working grid.
        atlas_classes: (X, Y, Z) class indices of the atlas labels on the same grid.
        velocities: per unlabelled volume, the registration network's (3, X/2, Y/2, Z/2) output (`velocity`).
        images: the unlabelled volumes' (X, Y, Z) normalised intensities (the appearance sources).
        integration_steps: scaling-and-squaring steps of the registration network (its `integration_steps`),
            0 when its output is a displacement (then fields are mixed linearly, and "style" uses -v as an
            approximate inverse).
        appearance: "style", "fourier" or "none".
        field_mode: "mix" or "scale".
        beta: the Beta(beta, beta) parameter of the field and style weights.
    """

    def __init__(
        self,
        atlas,
        atlas_classes,
        velocities: Sequence,
        images: Sequence,
        integration_steps: int,
        appearance: str = "fourier",
        field_mode: str = "mix",
        beta: float = 0.3,
    ) -> None:
        import torch
        from monai.networks.blocks import DVF2DDF

        if appearance not in APPEARANCES:
            raise ValueError(f"appearance must be one of {APPEARANCES}, not {appearance!r}")
        if field_mode not in FIELD_MODES:
            raise ValueError(f"field_mode must be one of {FIELD_MODES}, not {field_mode!r}")
        if len(velocities) != len(images) or not velocities:
            raise ValueError("one velocity field per unlabelled image, at least one")
        self.atlas, self.classes = atlas.float(), atlas_classes
        self.velocities, self.images = [v.float() for v in velocities], [u.float() for u in images]
        self.appearance, self.field_mode, self.beta = appearance, field_mode, beta
        # its own integrator: MONAI's Warp caches its grid per device, so it is not shared with the network's
        self.integrate = DVF2DDF(integration_steps) if integration_steps else None
        with torch.no_grad():
            if appearance == "style":  # S_j = U_j o exp(-v_j) - A, in atlas space
                self.styles = [
                    warp_slab(u, self.field(-v), 0, u.shape[2]) - self.atlas
                    for u, v in zip(self.images, self.velocities)
                ]
            if appearance == "fourier":  # each axial slice's amplitude spectrum
                self.amplitudes = [torch.fft.rfft2(u.movedim(2, 0)).abs() for u in self.images]

    def field(self, velocity):
        """A (1, 3, X, Y, Z) voxel displacement from a half-resolution network output."""
        from .models.registration import displacement

        return displacement(velocity[None], self.atlas.shape, self.integrate)

    def sample_field(self, rng: np.random.Generator):
        """A new displacement (1, 3, X, Y, Z) and what it was made of: (i, j, a)."""
        n = len(self.velocities)
        a = float(rng.beta(self.beta, self.beta))
        i = int(rng.integers(n))
        if self.field_mode == "scale" or n == 1:
            return self.field(a * self.velocities[i]), (i, i, a)
        j = int(rng.integers(n - 1))
        j += j >= i  # another volume
        return self.field(a * self.velocities[i] + (1 - a) * self.velocities[j]), (i, j, a)

    def sample(self, rng: np.random.Generator, start: int, size: int):
        """One exact pair on the axial slices [start, start + size): (image (X, Y, size) in [0, 1], class indices
        (X, Y, size)), both warped by one sampled field; the image given an unlabelled volume's appearance."""
        import torch

        with torch.no_grad():
            ddf, _ = self.sample_field(rng)
            source = int(rng.integers(len(self.images)))
            if self.appearance == "style":
                c = float(rng.beta(self.beta, self.beta))
                image = warp_slab(self.atlas + c * self.styles[source], ddf, start, size)
            else:
                image = warp_slab(self.atlas, ddf, start, size)
            if self.appearance == "fourier":
                image = amplitude_mix(image, self.amplitudes[source][start : start + size], float(rng.uniform()))
            classes = warp_slab(self.classes, ddf, start, size, nearest=True).long()
        return image.clamp(0, 1), classes


def warp_slab(volume, ddf, start: int, size: int, nearest: bool = False):
    """The slices [start, start + size) (last axis) of `volume` warped by `ddf`: out(p) = volume(p + ddf(p)).

    Args:
        volume: (X, Y, Z) tensor.
        ddf: (1, 3, X, Y, Z) displacement in voxels, MONAI `Warp`'s convention (border padding, voxel centres
            at the corners' alignment); only its slab is used, so a slab costs a slab's work.
        start: first slice; size: number of slices.
        nearest: nearest neighbour (label maps) instead of trilinear.
    """
    import torch
    from torch.nn import functional as F

    shape = volume.shape
    d = ddf[0, :, :, :, start : start + size]
    index = torch.meshgrid(
        *(torch.arange(n, dtype=d.dtype, device=d.device) for n in (shape[0], shape[1])),
        torch.arange(start, start + size, dtype=d.dtype, device=d.device),
        indexing="ij",
    )
    coords = [(index[a] + d[a]) * (2.0 / max(shape[a] - 1, 1)) - 1 for a in (2, 1, 0)]  # grid_sample: (z, y, x)
    out = F.grid_sample(
        volume[None, None].float(),
        torch.stack(coords, -1)[None],
        align_corners=True,
        mode="nearest" if nearest else "bilinear",
        padding_mode="border",
    )
    return out[0, 0]


def amplitude_mix(slab, amplitude, mix: float):
    """IST's appearance transfer per axial slice: |F| = (1 - mix) |F(slab)| + mix `amplitude`, phase of `slab`.

    Args:
        slab: (X, Y, K) image; amplitude: (K, X, Y // 2 + 1) amplitude spectra (`rfft2`) of another volume's
            slices; mix: the share of the other volume's amplitude, in [0, 1].
    """
    import torch

    spectrum = torch.fft.rfft2(slab.movedim(2, 0))
    mixed = torch.polar((1 - mix) * spectrum.abs() + mix * amplitude, spectrum.angle())
    return torch.fft.irfft2(mixed, s=slab.shape[:2]).movedim(0, 2)
