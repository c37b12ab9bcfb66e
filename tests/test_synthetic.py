"""Exact synthetic pairs: sampled fields, appearance transfer, and co-training on the mix (tiny volumes)."""

import numpy as np
import pytest
import torch
from test_cotrain import cfg, setup  # noqa: F401  (the module's fixture)

from napari_rrl_medsam.api import InputError
from napari_rrl_medsam.core.engines.cotrain import cotrain_engine
from napari_rrl_medsam.core.synthetic import SyntheticPairs, warp_slab
from napari_rrl_medsam.core.volume import Grid
from napari_rrl_medsam.core.warp import Field

SHAPE = (16, 20, 24)


def structures():
    """Class indices of two boxes, and an image that is exactly those structures (0, 0.5, 1)."""
    classes = torch.zeros(SHAPE, dtype=torch.long)
    classes[4:11, 5:15, 6:18] = 1
    classes[6:9, 8:12, 9:14] = 2
    return classes, classes.float() / 2


def smooth_velocity(seed: int, magnitude: float):
    """A smooth random half-resolution velocity field whose largest component is `magnitude` voxels."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(1, 3, 3, 3, 4, generator=g)
    v = torch.nn.functional.interpolate(v, size=tuple(n // 2 for n in SHAPE), mode="trilinear", align_corners=True)
    return (v / v.abs().max() * magnitude)[0]


def pairs(velocities, appearance="none", field_mode="mix", images=None):
    classes, image = structures()
    images = (
        images
        if images is not None
        else [torch.rand(SHAPE, generator=torch.Generator().manual_seed(i)) for i in range(len(velocities))]
    )
    return SyntheticPairs(image, classes, velocities, images, 7, appearance, field_mode)


def test_image_and_labels_move_together_under_a_known_field():
    shift = torch.zeros(3, *(n // 2 for n in SHAPE))
    shift[0] = 1.0  # a translation by 1 half-resolution voxel: 2 voxels along axis 0, whatever the integration
    synthetic = pairs([shift], field_mode="scale")
    synthetic.beta = 1e6  # Beta(b, b) with a huge b: a = 0.5, so the field is a 1-voxel translation
    classes, image = structures()
    out_image, out_classes = synthetic.sample(np.random.default_rng(0), 0, SHAPE[2])
    expected = torch.zeros_like(classes)
    expected[:-1] = classes[1:]  # out(p) = atlas(p + 1 voxel along axis 0); the edge value continues at the border
    expected[-1] = classes[-1]
    assert torch.equal(out_classes, expected)
    assert torch.allclose(out_image, expected.float() / 2, atol=0.01)  # moved with its labels (a = 0.5 +- 0.001)
    assert set(out_classes.unique().tolist()) == {0, 1, 2}
    # a slab is the same slab of the whole warp
    _, slab = synthetic.sample(np.random.default_rng(0), 5, 4)
    assert torch.equal(slab, expected[:, :, 5:9])


@pytest.mark.parametrize("appearance", ["fourier", "style", "none"])
@pytest.mark.parametrize("field_mode", ["mix", "scale"])
def test_pairs_are_made_on_the_device_of_their_inputs(appearance, field_mode):
    """Every tensor a pair is made from lives where the inputs live: "meta" stands in for a GPU here (a CPU
    tensor meeting a meta one raises, as it does meeting a CUDA one; a CUDA run once failed so)."""
    classes, image = structures()
    velocities = [smooth_velocity(1, 2.0).to("meta"), smooth_velocity(2, 2.0).to("meta")]
    images = [torch.rand(SHAPE).to("meta") for _ in velocities]
    synthetic = SyntheticPairs(image.to("meta"), classes.to("meta"), velocities, images, 7, appearance, field_mode)
    out_image, out_classes = synthetic.sample(np.random.default_rng(0), 2, 3)
    assert out_image.device.type == out_classes.device.type == "meta"
    assert out_image.shape == out_classes.shape == (SHAPE[0], SHAPE[1], 3)


def test_a_smooth_field_moves_labels_and_image_alike():
    synthetic = pairs([smooth_velocity(1, 2.0), smooth_velocity(2, 2.0)])
    for seed in range(4):
        image, classes = synthetic.sample(np.random.default_rng(seed), 0, SHAPE[2])
        assert set(classes.unique().tolist()) <= {0, 1, 2}
        agree = ((image > 0.25) == (classes > 0)).float().mean()
        assert agree > 0.97  # linear vs nearest interpolation differ only on boundary voxels
    moved = [synthetic.sample(np.random.default_rng(seed), 0, SHAPE[2])[1] for seed in range(4)]
    assert any(not torch.equal(m, structures()[0]) for m in moved)


@pytest.mark.parametrize("appearance", ["style", "fourier"])
def test_appearance_transfer_changes_intensities_never_the_labels(appearance):
    velocities = [smooth_velocity(1, 1.5), smooth_velocity(2, 1.5)]
    images = [torch.rand(SHAPE, generator=torch.Generator().manual_seed(7 + i)) for i in range(2)]
    plain = pairs(velocities, "none", images=images)
    styled = pairs(velocities, appearance, images=images)
    changed = 0
    for seed in range(6):
        a_image, a_classes = plain.sample(np.random.default_rng(seed), 2, 8)
        b_image, b_classes = styled.sample(np.random.default_rng(seed), 2, 8)
        assert torch.equal(a_classes, b_classes)
        assert 0 <= float(b_image.min()) and float(b_image.max()) <= 1
        changed += float((a_image - b_image).abs().mean()) > 1e-3
    assert changed >= 3  # (Beta(0.3, 0.3) weights: some draws are close to no transfer)


def test_the_style_offset_is_the_unlabelled_volume_brought_back_to_the_atlas():
    """S = U o exp(-v) - A: zero when U is the atlas moved by exp(v), the field registration found."""
    classes, image = structures()
    atlas = torch.nn.functional.avg_pool3d(image[None, None], 5, 1, 2, count_include_pad=False)[0, 0]  # smooth
    v = smooth_velocity(6, 2.0)
    moved = pairs([v]).field(v)
    unlabelled = warp_slab(atlas, moved, 0, SHAPE[2])  # the atlas as a subject that registration maps exactly
    synthetic = SyntheticPairs(atlas, classes, [v], [unlabelled], 7, "style")
    inner = (slice(3, -3),) * 3  # away from the borders, where the moved atlas was padded
    offset = float(synthetic.styles[0][inner].abs().mean())  # interpolation's blur only
    wrong_way = float((warp_slab(unlabelled, moved, 0, SHAPE[2]) - atlas)[inner].abs().mean())  # U o exp(+v)
    assert offset < 0.25 * float((unlabelled - atlas)[inner].abs().mean()) and offset < 0.15 * wrong_way


def test_sampled_fields_do_not_fold_for_any_weight():
    v1, v2 = smooth_velocity(3, 4.0), smooth_velocity(4, 4.0)  # large: a displacement this size would fold
    synthetic = pairs([v1, v2])
    grid = Grid(SHAPE, np.eye(4))
    assert (
        Field.from_voxels(
            2 * torch.nn.functional.interpolate(v1[None], size=SHAPE, mode="trilinear")[0].numpy(), grid
        ).folding_fraction()
        > 0
    )  # the velocity taken as a displacement folds
    for a in np.linspace(0, 1, 5):
        ddf = synthetic.field(a * v1 + (1 - a) * v2)
        assert Field.from_voxels(ddf[0].numpy(), grid).folding_fraction() == 0, a
        assert Field.from_voxels(synthetic.field(a * v1)[0].numpy(), grid).folding_fraction() == 0, a


def test_slab_warp_is_monai_warp():
    from napari_rrl_medsam.core.registration import warp_layer

    volume = torch.rand(SHAPE)
    ddf = 2 * torch.nn.functional.interpolate(smooth_velocity(5, 3.0)[None], size=SHAPE, mode="trilinear")
    full = warp_layer()(volume[None, None], ddf)[0, 0]
    assert torch.allclose(warp_slab(volume, ddf, 3, 5), full[:, :, 3:8], atol=1e-5)


def test_cotraining_on_the_mix_stops_and_resumes_as_one_run(setup, monkeypatch):  # noqa: F811
    tmp, atlas, atlas_labels, targets, registration, encoder = setup
    mix = dict(steps=4, synthetic_probability=0.5, intensity_augment=True, pseudo_weight=0.5, checkpoint_every=1)
    sampled = []
    real_sample = SyntheticPairs.sample
    monkeypatch.setattr(SyntheticPairs, "sample", lambda s, *a: sampled.append(1) or real_sample(s, *a))
    list(cotrain_engine(atlas, atlas_labels, targets, registration, tmp / "mix.pt", encoder, cfg(**mix)))
    run = cotrain_engine(atlas, atlas_labels, targets, registration, tmp / "mix2.pt", encoder, cfg(**mix))
    for e in run:
        if e.stage == "co-training" and e.step == 2:
            run.close()
            break
    rest = [
        e
        for e in cotrain_engine(
            atlas, atlas_labels, targets, registration, tmp / "mix2.pt", encoder, cfg(**mix), resume=True
        )
    ]
    assert [e.step for e in rest if e.stage == "co-training"] == [3, 4]
    assert "synthetic pairs" in {e.stage for e in rest} and 0 < len(sampled) < 8  # a mix of pair kinds
    from napari_rrl_medsam.core.checkpoint import load_checkpoint

    one, two = (load_checkpoint(tmp / n, "rrl-medsam")["parts"] for n in ("mix.pt", "mix2.pt"))
    for name in one:
        for key in one[name]:
            assert torch.allclose(one[name][key].float(), two[name][key].float(), atol=1e-6), (name, key)


def test_each_switch_removes_its_part(setup, monkeypatch):  # noqa: F811
    tmp, atlas, atlas_labels, targets, registration, encoder = setup
    from napari_rrl_medsam.core import synthetic
    from napari_rrl_medsam.core.engines import cotrain

    made, sampled, augmented = [], [], []
    real_init, real_sample, real_aug = SyntheticPairs.__init__, SyntheticPairs.sample, cotrain.intensity_augmentation
    monkeypatch.setattr(
        synthetic.SyntheticPairs, "__init__", lambda s, *a, **k: made.append(1) or real_init(s, *a, **k)
    )
    monkeypatch.setattr(synthetic.SyntheticPairs, "sample", lambda s, *a: sampled.append(1) or real_sample(s, *a))
    monkeypatch.setattr(cotrain, "intensity_augmentation", lambda: augmented.append(1) or real_aug())
    list(cotrain_engine(atlas, atlas_labels, targets, registration, tmp / "off.pt", encoder, cfg(steps=3)))
    assert made == sampled == augmented == []
    list(
        cotrain_engine(
            atlas,
            atlas_labels,
            targets,
            registration,
            tmp / "on.pt",
            encoder,
            cfg(steps=3, atlas_probability=0, synthetic_probability=1, intensity_augment=True),
        )
    )
    assert made == [1] and sampled == [1, 1, 1] and augmented == [1]
    # pseudo_weight 0: the (unlabelled, pseudo label) steps teach nothing
    events = list(
        cotrain_engine(
            atlas,
            atlas_labels,
            targets,
            registration,
            tmp / "w0.pt",
            encoder,
            cfg(steps=2, atlas_probability=0, pseudo_weight=0),
        )
    )
    assert [e.losses["loss"] for e in events if e.stage == "co-training"] == [0, 0]
    with pytest.raises(InputError, match="synthetic_probability"):
        next(
            cotrain_engine(
                atlas,
                atlas_labels,
                targets,
                registration,
                tmp / "x.pt",
                encoder,
                cfg(atlas_probability=0.5, synthetic_probability=0.6),
            )
        )
    with pytest.raises(InputError, match="appearance"):
        next(cotrain_engine(atlas, atlas_labels, targets, registration, tmp / "x.pt", encoder, cfg(appearance="x")))


def test_the_registration_velocity_integrates_to_its_field(setup):  # noqa: F811
    tmp, atlas, atlas_labels, targets, registration, encoder = setup
    velocity = registration.velocity(atlas, targets[0])
    ddf = registration.net.displacement(velocity[None], registration.grid.shape)[0].numpy()
    assert np.allclose(ddf, registration.field(atlas, targets[0], refine_steps=0).to_voxels(), atol=1e-4)


def test_structure_contrast_moves_each_structure_by_its_own_offset_and_keeps_the_labels(setup, monkeypatch):  # noqa: F811
    from napari_rrl_medsam.core import augment
    from napari_rrl_medsam.core.augment import structure_contrast
    from napari_rrl_medsam.core.engines import cotrain

    x = torch.full((3, 24, 24), 0.5)
    y = torch.zeros(3, 24, 24, dtype=torch.long)
    y[:, 2:10, 2:10], y[:, 14:22, 12:22] = 1, 2
    kept = y.clone()
    out = structure_contrast(x, y, 0.1, torch.Generator().manual_seed(3))
    assert torch.equal(y, kept)  # labels untouched
    inside1, inside2, far = out[:, 5, 5] - 0.5, out[:, 18, 17] - 0.5, out[:, 0, 23] - 0.5
    assert torch.allclose(inside1, inside1[0].expand(3)) and torch.allclose(inside2, inside2[0].expand(3))
    assert abs(float(inside1[0] - inside2[0])) > 1e-3 and torch.all(far.abs() < 1e-6)  # own offsets; background kept
    again = structure_contrast(x, y, 0.1, torch.Generator().manual_seed(3))
    assert torch.equal(out, again) and torch.equal(structure_contrast(x, y, 0.0, torch.Generator()), x)
    # blurred: the offset map has no step at a structure's edge
    step = (out[0, 5, 9] - out[0, 5, 10]).abs()
    assert step < (inside1[0]).abs()
    # class shares (C, K, P, Q) give the same offsets as the class indices they one-hot encode
    shares = torch.nn.functional.one_hot(y, 3).permute(3, 0, 1, 2).float()
    assert torch.allclose(structure_contrast(x, shares, 0.1, torch.Generator().manual_seed(3)), out, atol=1e-6)
    # the engine's switch: off by default, on with structure_contrast > 0
    tmp, atlas, atlas_labels, targets, registration, encoder = setup
    calls = []
    monkeypatch.setattr(cotrain, "structure_contrast", lambda *a: calls.append(a[2]) or augment.structure_contrast(*a))
    list(cotrain_engine(atlas, atlas_labels, targets, registration, tmp / "sc0.pt", encoder, cfg(steps=2)))
    assert calls == []
    list(
        cotrain_engine(
            atlas, atlas_labels, targets, registration, tmp / "sc.pt", encoder, cfg(steps=2, structure_contrast=0.1)
        )
    )
    assert calls == [0.1, 0.1]
