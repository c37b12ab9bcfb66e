"""The co-training building blocks: slab decoders, the auto-prompting decoder, mutual EMA."""

import pytest
import torch

from napari_rrl_medsam.core.models.encoder import EncoderConfig, LightEncoder
from napari_rrl_medsam.core.models.segmentation import APDecoder, SlabDecoder, mutual_ema, slab_features

CFG = EncoderConfig(channels=(4, 8, 8, 8), embed_dim=16, neck_channels=8)


def test_mutual_ema_is_exact_in_both_directions():
    torch.manual_seed(0)
    g, m = LightEncoder(CFG), LightEncoder(CFG)
    g.train()(torch.rand(2, 3, 32, 32))  # non-trivial batch-norm statistics
    g0 = {k: v.clone() for k, v in g.state_dict().items()}
    m0 = {k: v.clone() for k, v in m.state_dict().items()}
    mutual_ema(g, m, alpha=0.9)
    for name, value in g.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, 0.9 * g0[name] + 0.1 * m0[name], atol=1e-7), name
            assert torch.allclose(m.state_dict()[name], 0.9 * m0[name] + 0.1 * g0[name], atol=1e-7), name
        else:
            assert torch.equal(value, g0[name]) and torch.equal(m.state_dict()[name], m0[name])
    g1 = {k: v.clone() for k, v in g.state_dict().items()}
    mutual_ema(g, m, alpha=1.0)  # a = 1: nothing moves
    assert all(torch.equal(v, g1[k]) for k, v in g.state_dict().items())


def test_decoders_give_logits_at_slice_resolution_and_the_prompt_matters():
    torch.manual_seed(0)
    encoder = LightEncoder(CFG).eval()
    slab = torch.rand(5, 3, 32, 32)  # 5 slices
    feats = slab_features(encoder, slab)
    assert [f.shape[2] for f in feats] == [5] * 4
    general = SlabDecoder(CFG.channels, n_classes=3, width=8)
    coarse = general(feats)
    assert coarse.shape == (1, 3, 5, 32, 32)
    ap = APDecoder(CFG.channels, n_classes=3, width=8).eval()
    for p in ap.prompt.parameters():  # non-trivial prompt embedding
        torch.nn.init.normal_(p, std=0.5)
    prompt_a = torch.softmax(coarse, 1)
    prompt_b = torch.softmax(torch.randn_like(coarse) * 5, 1)
    with torch.no_grad():
        out_a, out_b, out_none = ap(feats, prompt_a), ap(feats, prompt_b), ap(feats, None)
    assert out_a.shape == (1, 3, 5, 32, 32)
    assert not torch.allclose(out_a, out_b, atol=1e-4)  # changing the prompt changes the output
    assert not torch.allclose(out_a, out_none, atol=1e-4)
    no_prompt = APDecoder(CFG.channels, n_classes=3, width=8, use_prompt=False).eval()
    assert no_prompt.prompt is None  # the ablation removes the prompt path entirely
    with torch.no_grad():
        assert torch.equal(no_prompt(feats, prompt_a), no_prompt(feats, prompt_b))


def test_a_full_resolution_stage_starts_as_the_decoder_without_it_then_sees_the_image():
    from napari_rrl_medsam.core.configs import SegmentationSpec

    torch.manual_seed(0)
    feats = slab_features(LightEncoder(CFG).eval(), torch.rand(4, 3, 32, 32))
    image_a, image_b = torch.rand(1, 1, 4, 32, 32), torch.rand(1, 1, 4, 32, 32)
    full = SlabDecoder(CFG.channels, n_classes=3, width=8, full_resolution=True).eval()
    coarse = SlabDecoder(CFG.channels, n_classes=3, width=8).eval()  # the switch off: no stage, image unread
    assert coarse.full is None
    coarse.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("full.")})
    with torch.no_grad():
        assert torch.equal(coarse(feats, image=image_a), coarse(feats, image=image_b))
        assert torch.allclose(full(feats, image=image_a), coarse(feats))  # a new stage adds zero
        for p in full.full.net[-1].parameters():  # as after training: a non-zero correction
            torch.nn.init.normal_(p, std=0.5)
        out_a, out_b = full(feats, image=image_a), full(feats, image=image_b)
    assert out_a.shape == (1, 3, 4, 32, 32)
    assert not torch.allclose(out_a, out_b, atol=1e-4)  # the image moves the logits
    edited = image_a.clone()
    edited[..., 2, 10, 10] += 1.0  # one pixel of one slice: the stage is in-plane (per-slice convolutions)
    with torch.no_grad():
        change = (full(feats, image=edited) - out_a).abs().amax(1)[0]  # (K, S, S)
    assert change[2, 10, 10] > 0 and change[[0, 1, 3]].sum() == 0  # the other slices untouched
    with torch.no_grad():  # one pixel per logit: the 4 pixels of one stride-2 position get their own values
        dot = torch.zeros(1, 1, 1, 8, 8)
        dot[..., 2, 2] = 1.0
        cell = full.full(torch.zeros(1, 8, 1, 4, 4), dot)[0, :, 0, 2:4, 2:4].reshape(3, 4)
    assert cell.shape == (3, 4) and len({tuple(v.tolist()) for v in cell.T}) == 4
    with pytest.raises(ValueError, match="image"):
        full(feats)
    ap = APDecoder(CFG.channels, 3, 8, full_resolution=True).eval()
    with torch.no_grad():
        assert ap(feats, torch.softmax(out_a, 1), image=image_a).shape == (1, 3, 4, 32, 32)
    assert not SegmentationSpec().full_resolution  # an option; checkpoints from before it read as without
    assert not SegmentationSpec.from_dict({"decoder_width": 8}).full_resolution


def test_a_residual_ap_decoder_adds_the_prompt_as_a_log_prior():
    torch.manual_seed(0)
    feats = slab_features(LightEncoder(CFG).eval(), torch.rand(3, 3, 32, 32))
    plain = APDecoder(CFG.channels, n_classes=3, width=8).eval()
    residual = APDecoder(CFG.channels, n_classes=3, width=8, residual=True).eval()
    residual.load_state_dict(plain.state_dict())  # same weights: the prior is parameter-free
    prompt = torch.softmax(torch.randn(1, 3, 3, 32, 32) * 3, 1)
    with torch.no_grad():
        assert torch.allclose(residual(feats, prompt), plain(feats, prompt) + torch.log(prompt.clamp_min(1e-4)))
    assert not APDecoder(CFG.channels, 3, 8, use_prompt=False, residual=True).residual  # ablation: no prompt at all


def test_slab_statistics_normalise_each_slab_by_itself_and_keep_the_running_averages():
    from napari_rrl_medsam.core.models.encoder import EncoderConfig, LightEncoder
    from napari_rrl_medsam.core.models.segmentation import slab_statistics

    torch.manual_seed(0)
    encoder = LightEncoder(EncoderConfig(channels=(4, 8, 8, 8), embed_dim=16, neck_channels=8)).eval()
    x = torch.rand(3, 3, 32, 32) * 5 + 2  # far from the initial running statistics (mean 0, variance 1)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    running = encoder.features(x)[-1]
    with torch.no_grad(), slab_statistics(encoder):
        by_slab = encoder.features(x)[-1]
    assert not encoder.training and all(not m.training for m in encoder.modules())  # modes restored
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in before.items())  # statistics untouched
    encoder.train()
    with torch.no_grad():
        as_trained = encoder.features(x)[-1]  # training normalises by the batch (the slab) too
    assert torch.allclose(by_slab, as_trained, atol=1e-6) and not torch.allclose(by_slab, running, atol=1e-3)


@pytest.mark.parametrize("shape,size", [((112, 96), 128), ((80, 96), 128), ((72, 84), 64), ((30, 30), 32)])
def test_training_labels_sit_on_their_image_after_the_square_resize(shape, size):
    """A label edge lands on the same pixel as the image edge it outlines (both resized to the encoder's square)."""
    from napari_rrl_medsam.core.segmentation import labels_to_square, to_square

    mid = size // 2  # profiles through the middle, away from corners where an edge meets the padding
    for edge in range(3, min(shape) - 3, 5):
        labels = torch.zeros((2, *shape), dtype=torch.long)
        labels[0, edge:, :] = 1  # an edge across each axis
        labels[1, :, edge:] = 2
        image = (labels > 0).float()  # the image is the structure itself
        resized_image = to_square(image, size)[:, 0] > 0.5
        resized_labels = labels_to_square(labels, size)
        assert torch.equal(resized_labels[0, :, mid] > 0, resized_image[0, :, mid]), (shape, size, edge)
        assert torch.equal(resized_labels[1, mid] > 0, resized_image[1, mid]), (shape, size, edge)
        assert set(resized_labels.unique().tolist()) == {0, 1, 2}


def test_mirror_index_exchanges_each_pair_and_refuses_a_value_in_two_pairs():
    import numpy as np

    from napari_rrl_medsam.api import InputError
    from napari_rrl_medsam.core.configs import FREESURFER_LEFT_RIGHT
    from napari_rrl_medsam.core.segmentation import mirror_index

    classes = [0, 2, 16, 41, 17, 53, 5]  # 44 (the partner of 5) is not among them: 5 stays itself
    assert mirror_index(FREESURFER_LEFT_RIGHT, classes).tolist() == [0, 3, 2, 1, 5, 4, 6]
    assert mirror_index([], classes).tolist() == list(range(7))
    for bad in ([(2, 41), (41, 3)], [(2, 2)], [(2, 41, 3)]):
        with pytest.raises(InputError, match="mirror pairs"):
            mirror_index(bad, classes)
    assert np.array_equal(mirror_index([(53, 17)], classes), mirror_index([(17, 53)], classes))


def test_mirroring_makes_the_prediction_mirror_equivariant():
    """Averaged with its mirror image's prediction (flipped back, pairs swapped), the segmentation of the
    mirrored volume is the mirror of the segmentation, pairs swapped: exactly, whatever the network."""
    import numpy as np

    from napari_rrl_medsam.core.engines.cotrain import CotrainConfig, build_parts
    from napari_rrl_medsam.core.segmentation import mirror_averaged, predict_probabilities

    config = CotrainConfig(slab=4, image_size=32, decoder_width=8, device="cpu")
    parts = build_parts(config, CFG, 3)
    for module in parts.values():
        module.eval()
    x = torch.rand(20, 20, 8, generator=torch.Generator().manual_seed(0))
    pairs = np.array([0, 2, 1])
    _, m = mirror_averaged(parts, x, config, 0, pairs)
    _, m_of_mirror = mirror_averaged(parts, x.flip(0), config, 0, pairs)
    assert torch.allclose(m_of_mirror, m.flip(1)[torch.as_tensor(pairs)], atol=1e-5)
    _, plain = predict_probabilities(parts, x, config)
    assert not torch.allclose(plain, m, atol=1e-3)  # a random network is no mirror of itself: averaging acts
    assert torch.allclose(m.sum(0), torch.ones(20, 20, 8), atol=1e-5)  # still probabilities


@pytest.mark.parametrize("size", [8, 24, 56])  # under and over the size where inference uses PyTorch's own
def test_slice_conv_computes_what_conv3d_computes_forward_and_backward(size):
    from napari_rrl_medsam.core.models.slab_layers import slice_conv

    torch.manual_seed(0)
    reference = torch.nn.Conv3d(5, 4, 3, padding=1).double()
    fast = slice_conv(torch.nn.Conv3d(5, 4, 3, padding=1).double())
    fast.load_state_dict(reference.state_dict())
    x = torch.randn(2, 5, 3, size, size + 3, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 4, 3, size, size + 3, dtype=torch.float64)
    outputs, grads = [], []
    for conv in (reference, fast):
        y = conv(x)
        (y * weights).sum().backward()
        outputs.append(y)
        grads.append([x.grad.clone(), conv.weight.grad, conv.bias.grad])
        x.grad = None
    torch.testing.assert_close(outputs[1], outputs[0])
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), reference(x))


def test_slice_conv_keeps_the_parameters_and_the_random_stream_and_refuses_other_convolutions():
    from napari_rrl_medsam.core.models.slab_layers import slice_conv

    torch.manual_seed(1)
    conv = torch.nn.Conv3d(3, 2, 3, padding=1)
    expected_next = torch.rand(1)
    torch.manual_seed(1)
    conv = torch.nn.Conv3d(3, 2, 3, padding=1)
    fast = slice_conv(conv)
    assert fast.weight is conv.weight and fast.bias is conv.bias
    assert torch.equal(torch.rand(1), expected_next)  # building it drew no random numbers: same initialisation
    assert list(fast.state_dict()) == list(conv.state_dict())
    with pytest.raises(ValueError, match="3 x 3 x 3"):
        slice_conv(torch.nn.Conv3d(3, 2, 3, padding=1, stride=2))


def test_resize_in_plane_is_trilinear_with_the_slices_kept():
    from torch.nn import functional as F

    from napari_rrl_medsam.core.models.slab_layers import resize_in_plane

    x = torch.randn(2, 3, 4, 5, 7)
    torch.testing.assert_close(
        resize_in_plane(x, scale=2), F.interpolate(x, scale_factor=(1, 2, 2), mode="trilinear", align_corners=False)
    )
    torch.testing.assert_close(
        resize_in_plane(x, size=(9, 4)), F.interpolate(x, size=(4, 9, 4), mode="trilinear", align_corners=False)
    )
