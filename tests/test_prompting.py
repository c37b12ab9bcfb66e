"""Box prompts (issue 18, item 4): where a box lands, propagation, errors, and the real LiteMedSAM on a phantom."""

from __future__ import annotations

import numpy as np
import pytest

from napari_rrl_medsam import api
from napari_rrl_medsam.core.prompting import SliceBox, VolumePrompter
from napari_rrl_medsam.core.resample import reorient_canonical
from napari_rrl_medsam.core.volume import Volume

# voxel axes (i, j, k) = (left->right flipped, superior, anterior): an LIA-like scan with anisotropic voxels
AFFINE = np.array([[-1.0, 0, 0, 20], [0, 0, 1.5, -10], [0, -2.0, 0, 30], [0, 0, 0, 1]])


class Threshold:
    """A stand-in model whose mask is exactly the bright voxels inside the box (and counts its embeddings)."""

    input_size = 64

    def __init__(self) -> None:
        self.embedded = 0

    def embed(self, image):
        self.embedded += 1
        return image[0, 0].numpy()

    def decode(self, embedding, box):
        x0, y0, x1, y1 = box
        rows, cols = np.mgrid[: self.input_size, : self.input_size] + 0.5
        inside = (cols > x0) & (cols < x1) & (rows > y0) & (rows < y1)
        return np.where(inside & (embedding > 0.5), 5.0, -5.0), 0.9


def ball_volume(radius: float = 5.0) -> tuple[Volume, np.ndarray]:
    """A bright ellipsoid (a ball in mm) in an LIA-like volume; returns the volume and the ball's voxels."""
    shape = (24, 14, 18)
    idx = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), -1).reshape(-1, 3)
    ras = idx @ AFFINE[:3, :3].T + AFFINE[:3, 3]
    centre = np.array([4.0, 2.0, 14.0])
    ball = (np.linalg.norm(ras - centre, axis=1) <= radius).reshape(shape)
    image = np.where(ball, 1.0, 0.2).astype(np.float32) + np.random.default_rng(0).normal(0, 0.01, shape)
    return Volume(image.astype(np.float32), AFFINE), ball


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def box_around(centre_z: float, x: tuple[float, float], y: tuple[float, float]):
    return ((x[0], y[0], centre_z), (x[1], y[1], centre_z))


def test_a_box_in_world_millimetres_segments_that_structure_and_propagates_on_the_native_grid():
    volume, ball = ball_volume()
    model = Threshold()
    prompter = VolumePrompter(volume, model)
    result = prompter.segment(box_around(14.0, (-3, 11), (-5, 9)))
    assert result.shape == volume.shape and np.array_equal(result.affine, volume.affine)
    assert result.kind == "labels" and set(np.unique(result.array)) == {0, 1}
    assert dice(result.array.astype(bool), ball) > 0.9
    single = prompter.segment(box_around(14.0, (-3, 11), (-5, 9)), propagate=False)
    slices = np.nonzero(single.array.any(axis=(0, 2)))[0]  # voxel axis 1 is superior: the axial slices
    assert len(slices) == 1 and 0 < single.array.sum() < ball.sum()
    assert model.embedded == len(np.nonzero(result.array.any(axis=(0, 2)))[0]) + 2  # each slice once (+2 ends)


def test_the_box_lands_where_it_was_drawn():
    """Half the ball boxed (the patient's right half, x < 4 mm): only that half is segmented — the display flips
    and the resize put the box on the right voxels."""
    volume, ball = ball_volume()
    mask = VolumePrompter(volume, Threshold()).segment(box_around(14.0, (-3, 3.5), (-5, 9)), propagate=False)
    ras_x = AFFINE[0, 0] * np.arange(volume.shape[0]) + AFFINE[0, 3]  # voxel axis 0 runs right -> left
    marked = np.nonzero(mask.array.any(axis=(1, 2)))[0]
    assert marked.size and (ras_x[marked] <= 4.0).all() and (ras_x[marked] >= -3.5).all()


def test_bad_boxes_say_what_to_do():
    volume, _ = ball_volume()
    prompter = VolumePrompter(volume, Threshold())
    with pytest.raises(api.InputError, match="different axial slices"):
        prompter.box_from_world(((-3, -5, 10.0), (11, 9, 20.0)))
    with pytest.raises(api.InputError, match="outside the volume"):
        prompter.box_from_world(box_around(14.0, (200, 220), (-5, 9)))
    with pytest.raises(api.InputError, match="no area"):
        prompter.box_from_world(box_around(14.0, (4, 4), (-5, 9)))
    with pytest.raises(api.InputError, match="two opposite corners"):
        prompter.box_from_world((1, 2, 3))
    with pytest.raises(api.InputError, match="not a label map"):
        VolumePrompter(volume.with_array(np.zeros(volume.shape, np.uint8), kind="labels"), Threshold())


def test_propagation_follows_the_mask_and_stops_where_it_vanishes():
    volume, ball = ball_volume()
    prompter = VolumePrompter(volume, Threshold())
    box = prompter.box_from_world(box_around(14.0, (-3, 11), (-5, 9)))
    mask = prompter.propagate(box)
    ball = reorient_canonical(Volume(ball, AFFINE)).array  # the prompter's own (RAS) grid
    covered = np.nonzero(mask.any(axis=(0, 1)))[0]
    truth = np.nonzero(ball.any(axis=(0, 1)))[0]
    assert covered.min() >= truth.min() - 1 and covered.max() <= truth.max() + 1 and len(covered) >= len(truth) - 2
    grown = SliceBox.around(mask[:, :, box.z], box.z)
    assert grown.x0 >= 0 and grown.x1 < mask.shape[0]


def test_litemedsam_segments_a_bright_structure_from_one_box():
    """The shipped LiteMedSAM (weights verified) on a phantom: a bright ellipsoid in a grey head."""
    shape = (32, 32, 20)
    idx = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), -1).astype(float)
    head = np.linalg.norm((idx - [15.5, 15.5, 9.5]) / [14, 14, 12], axis=-1) <= 1
    blob = np.linalg.norm((idx - [12, 18, 9.5]) / [5, 4, 5], axis=-1) <= 1
    image = np.where(blob, 1.0, np.where(head, 0.4, 0.0)).astype(np.float32)
    volume = Volume(image, np.diag([1.5, 1.5, 1.5, 1.0]))
    z = 9.5 * 1.5
    out = api.prompt_segment(volume, ((6 * 1.5, 13 * 1.5, z), (18 * 1.5, 23 * 1.5, z)))
    mask = out.array.astype(bool)
    assert dice(mask, blob) > 0.75
    assert not mask[:, :, 0].any() and not mask[:, :, -1].any()  # propagation stopped outside the blob


def tiny_sam():
    """segment_anything's Sam with SAM's parts at toy sizes (64 px input): what a SAM ViT-B checkpoint file builds."""
    from functools import partial

    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(0)
    encoder = ImageEncoderViT(img_size=64, patch_size=16, embed_dim=32, depth=1, num_heads=2, out_chans=32,
                              norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))  # fmt: skip
    prompts = PromptEncoder(embed_dim=32, image_embedding_size=(4, 4), input_image_size=(64, 64), mask_in_chans=4)
    transformer = TwoWayTransformer(depth=1, embedding_dim=32, mlp_dim=64, num_heads=2)
    decoder = MaskDecoder(transformer_dim=32, transformer=transformer, iou_head_hidden_dim=16)
    return Sam(encoder, prompts, decoder)


def test_a_sam_vit_b_checkpoint_file_segments_boxes_with_its_normalisation(tmp_path, monkeypatch):
    """A user's SAM ViT-B / MedSAM file: loaded strictly into segment_anything's model (here its parts at toy sizes:
    the real 375 MB weights are not on these machines), its input normalisation chosen, boxes segmented."""
    import segment_anything
    import torch

    from napari_rrl_medsam.core.prompting import prompt_model
    from napari_rrl_medsam.core.teachers.sam import sam_normalise

    monkeypatch.setattr(segment_anything, "build_sam_vit_b", tiny_sam)
    path = tmp_path / "medsam_vit_b.pth"
    torch.save(tiny_sam().state_dict(), path)
    volume, _ = ball_volume()
    out = api.prompt_segment(volume, box_around(14.0, (-3, 11), (-5, 9)), checkpoint=path)
    assert out.shape == volume.shape and np.array_equal(out.affine, volume.affine)
    assert set(np.unique(out.array)) <= {0, 1}
    model = prompt_model(path)
    assert model.input_size == 64 and model.normalise is None  # not the official SAM file: [0, 1] as MedSAM
    assert prompt_model(path, normalisation="sam").normalise is sam_normalise
    prompter = api.prompter(volume, checkpoint=path, normalisation="sam")
    plane = prompter._to_input(prompter.image[:, :, 5])
    rows, cols = prompter._layout
    assert plane.shape == (1, 3, 64, 64) and plane[..., :rows, :cols].min() < 0  # normalised, then padded with 0
    assert (plane[..., rows:, :] == 0).all() and (plane[..., :, cols:] == 0).all()
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(api.InputError, match="does not fit SAM ViT-B"):
        api.prompter(volume, checkpoint=tmp_path / "other.pth")
    with pytest.raises(api.InputError, match="does not exist"):
        api.prompter(volume, checkpoint=tmp_path / "missing.pth")
    with pytest.raises(api.InputError, match="normalisation is one of"):
        api.prompter(volume, checkpoint=path, normalisation="imagenet")
