"""Co-training engine and segmentation inference on tiny volumes."""

import numpy as np
import pytest
import torch
from test_registration import config as reg_config
from test_registration import phantom

from napari_rrl_medsam.api import InputError, Volume
from napari_rrl_medsam.core.checkpoint import load_checkpoint
from napari_rrl_medsam.core.engines.cotrain import CotrainConfig, cotrain_engine
from napari_rrl_medsam.core.engines.register import registration_engine
from napari_rrl_medsam.core.models.encoder import EncoderConfig, LightEncoder
from napari_rrl_medsam.core.registration import RegistrationModel
from napari_rrl_medsam.core.segmentation import SegmentationModel

TINY = EncoderConfig(channels=(4, 8, 8, 8), embed_dim=16, neck_channels=8)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cotrain")
    atlas, atlas_labels = phantom()
    targets = [phantom(shift=s)[0] for s in (1.0, -1.5)]
    list(registration_engine(atlas, atlas_labels, targets, tmp / "reg.pt", config=reg_config(steps=30)))
    torch.manual_seed(1)  # not the co-training seed: a "distilled" encoder differs from a random init
    encoder = LightEncoder(TINY)
    encoder.teacher = {"name": "tiny", "id": "tiny-0"}
    return tmp, atlas, atlas_labels, targets, RegistrationModel.load(tmp / "reg.pt", device="cpu"), encoder


def recorded(monkeypatch, name: str) -> list:
    """The calls of `_CotrainStep.<name>` from now on, as (the step, its arguments, what it returned)."""
    from napari_rrl_medsam.core.engines.cotrain import _CotrainStep

    calls, method = [], getattr(_CotrainStep, name)

    def recording(self, *args):
        out = method(self, *args)
        calls.append((self, args, out))
        return out

    monkeypatch.setattr(_CotrainStep, name, recording)
    return calls


def cfg(**kw):
    base = dict(
        steps=4, slab=4, image_size=32, decoder_width=8, checkpoint_every=100, preview_every=2, device="cpu", lr=3e-3
    )
    base.update(kw)
    return CotrainConfig(**base)


def test_cotraining_runs_with_previews_and_a_checkpoint_that_predicts_identically(setup):
    tmp, atlas, atlas_labels, targets, registration, encoder = setup
    truth = phantom(shift=1.0)  # targets[0] and its labels: a labelled validation volume
    events = list(
        cotrain_engine(
            atlas, atlas_labels, targets, registration, tmp / "a.pt", encoder, cfg(validate_every=2), validation=[truth]
        )
    )
    assert [e.stage for e in events][:2] == ["pseudo labels"] * 2
    training = [e for e in events if e.stage == "co-training"]
    assert [e.step for e in training] == [1, 2, 3, 4]
    preview = training[1].preview
    assert set(preview) >= {"pseudo_labels", "auto_prompt", "segmentation", "target"}
    assert preview["auto_prompt"].shape == atlas.shape
    state = load_checkpoint(tmp / "a.pt", "rrl-medsam")
    assert state["classes"] == [0, 1, 2] and state["teacher"]["id"] == "tiny-0"
    model = SegmentationModel.load(tmp / "a.pt", device="cpu", precision="float32")  # as the validation computes
    again = SegmentationModel.load(tmp / "a.pt", device="cpu", precision="float32")
    target = targets[0]
    a, b = model.segment(target), again.segment(target)
    assert np.array_equal(a.labels.array, b.labels.array)  # the checkpoint round-trips
    assert np.array_equal(a.labels.affine, target.affine) and a.labels.shape == target.shape
    assert a.auto_prompt.shape == target.shape
    assert set(np.unique(a.labels.array)) <= {0, 1, 2}
    # a prior label map (e.g. the registration's) fused with the final probabilities, by its weight
    assert np.array_equal(model.segment(target, truth[1], prior_weight=1.0).labels.array, truth[1].array)
    unfused = model.segment(target, truth[1], prior_weight=0.0)
    assert np.array_equal(unfused.labels.array, a.labels.array)
    with pytest.raises(InputError, match="prior_weight"):
        model.segment(target, truth[1], prior_weight=2.0)
    # the validation Dice reported at the last step is that of the saved model on the working grid
    assert [bool(e.metrics) for e in training] == [False, True, False, True]
    from napari_rrl_medsam.api import evaluate, resample

    work = Volume(a.working_labels, model.grid.affine, "labels")
    expected = evaluate(work, resample(truth[1], model.grid), hd95=False).mean_dice
    assert training[-1].metrics["val_dice"] == pytest.approx(expected, abs=1e-6)
    assert 0 <= training[-1].metrics["val_dice_general"] <= 1
    assert model.register(atlas, atlas_labels, target).warped_labels.shape == target.shape


def test_prediction_in_bfloat16_autocasts_the_networks_and_keeps_the_labels(setup, monkeypatch):
    from napari_rrl_medsam.core import device

    tmp, atlas, atlas_labels, targets, registration, encoder = setup
    list(cotrain_engine(atlas, atlas_labels, targets, registration, tmp / "p.pt", encoder, cfg(preview_every=0)))
    exact = SegmentationModel.load(tmp / "p.pt", device="cpu", precision="float32")
    fast = SegmentationModel.load(tmp / "p.pt", device="cpu", precision="bfloat16")
    assert exact.dtype is None and fast.dtype is torch.bfloat16
    seen = []
    for model in (exact, fast):
        conv = next(m for m in model.parts["medical"].modules() if isinstance(m, torch.nn.Conv2d))
        conv.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    a, b = exact.segment(targets[0]), fast.segment(targets[0])
    assert set(seen) == {torch.float32, torch.bfloat16}  # each model's networks ran in its own type
    assert b.labels.array.dtype == np.int32 and np.array_equal(b.labels.affine, targets[0].affine)
    assert (a.labels.array == b.labels.array).mean() > 0.99 and b.auto_prompt.shape == targets[0].shape
    assert (exact.working_labels(targets[0]) == fast.working_labels(targets[0])).mean() > 0.99
    fast.precision = "float32"  # settable after loading, as the slabs' overlap
    assert fast.dtype is None and np.array_equal(fast.segment(targets[0]).labels.array, a.labels.array)
    with pytest.raises(InputError, match="unknown precision 'half'"):
        fast.precision = "half"
    with pytest.raises(InputError, match="float16 is for CUDA"):
        SegmentationModel.load(tmp / "p.pt", device="cpu", precision="float16")
    for native, expected in ((False, None), (True, torch.bfloat16)):  # "auto" follows what the CPU computes natively
        monkeypatch.setattr(device, "cpu_has_bfloat16", lambda native=native: native)
        assert device.inference_dtype("cpu", "auto") is expected
    assert device.inference_dtype("cpu", "float32") is None


def test_mixed_precision_on_a_cpu_trains_in_bfloat16_only_where_the_cpu_has_it(setup, monkeypatch):
    from napari_rrl_medsam.core import device

    tmp, atlas, atlas_labels, targets, registration, encoder = setup
    for native in (True, False):
        monkeypatch.setattr(device, "cpu_has_bfloat16", lambda native=native: native)
        seen = []
        record = torch.nn.modules.module.register_module_forward_hook(
            lambda m, args, out: seen.append(out.dtype) if isinstance(m, torch.nn.Conv2d) else None
        )
        try:
            list(cotrain_engine(atlas, atlas_labels, targets, registration, tmp / f"amp{native}.pt", encoder,
                                cfg(steps=2, amp=True, preview_every=0)))  # fmt: skip
        finally:
            record.remove()
        assert seen and (torch.bfloat16 in seen) is native and (torch.float32 in seen) is not native
        weights = [v for part in load_checkpoint(tmp / f"amp{native}.pt", "rrl-medsam")["parts"].values() for v in
                   part.values() if v.is_floating_point()]  # fmt: skip
        assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights)  # float32 weights, trained
    assert device.training_dtype("cpu", False) is None and device.training_dtype("cuda", True) is torch.float16


def test_stop_and_resume(setup):
    tmp, atlas, atlas_labels, targets, registration, encoder = setup
    run = cotrain_engine(atlas, atlas_labels, targets, registration, tmp / "b.pt", encoder, cfg(steps=5))
    for e in run:
        if e.stage == "co-training" and e.step == 2:
            run.close()
            break
    stopped = load_checkpoint(tmp / "b.pt", "rrl-medsam")
    assert stopped["step"] == 2 and stopped["elapsed"] > 0
    rest = [
        e.step
        for e in cotrain_engine(
            atlas, atlas_labels, targets, registration, tmp / "b.pt", encoder, cfg(steps=5), resume=True
        )
        if e.stage == "co-training"
    ]
    assert rest == [3, 4, 5]
    assert load_checkpoint(tmp / "b.pt", "rrl-medsam")["elapsed"] > stopped["elapsed"]  # training time adds up


def test_poly_schedule_decays_both_learning_rates(setup):
    tmp, atlas, atlas_labels, targets, registration, encoder = setup
    list(
        cotrain_engine(
            atlas,
            atlas_labels,
            targets,
            registration,
            tmp / "poly.pt",
            encoder,
            cfg(steps=4, lr_schedule="poly", encoder_lr=1e-3),
        )
    )
    groups = load_checkpoint(tmp / "poly.pt", "rrl-medsam")["optimizer"]["param_groups"]
    factor = (1 - 3 / 4) ** 0.9  # the rate of the last (4th) step
    assert [g["lr"] for g in groups] == pytest.approx([1e-3 * factor, 3e-3 * factor])
    with pytest.raises(InputError, match="lr_schedule"):
        next(
            cotrain_engine(atlas, atlas_labels, targets, registration, tmp / "x.pt", encoder, cfg(lr_schedule="cosine"))
        )
    # checkpoints from before the poly / residual defaults load with what they were trained with
    old = CotrainConfig.from_dict({"steps": 10})
    assert (old.lr_schedule, old.prompt_residual) == ("constant", False)
    assert (CotrainConfig().lr_schedule, CotrainConfig().prompt_residual) == ("poly", True)


def test_ablation_switches_remove_their_component(setup, monkeypatch):
    tmp, atlas, atlas_labels, targets, registration, encoder = setup
    from napari_rrl_medsam.core.engines import cotrain

    calls = []
    monkeypatch.setattr("napari_rrl_medsam.core.engines.cotrain.mutual_ema", lambda *a, **k: calls.append(1))
    list(
        cotrain_engine(
            atlas, atlas_labels, targets, registration, tmp / "c.pt", encoder, cfg(steps=2, use_mutual_ema=False)
        )
    )
    assert calls == []
    list(cotrain_engine(atlas, atlas_labels, targets, registration, tmp / "d.pt", encoder, cfg(steps=2)))
    assert len(calls) == 2
    parts = cotrain.build_parts(cfg(use_prompt=False), TINY, 3)
    assert parts["ap"].prompt is None
    random_init = cotrain.build_parts(cfg(use_dskd=False), TINY, 3, encoder.state_dict())
    distilled = cotrain.build_parts(cfg(), TINY, 3, encoder.state_dict())
    w = "stages.0.0.conv.weight"
    assert torch.equal(distilled["general"].state_dict()[w], encoder.state_dict()[w])
    assert not torch.equal(random_init["general"].state_dict()[w], encoder.state_dict()[w])
    with pytest.raises(InputError, match="distilled general encoder"):
        next(cotrain_engine(atlas, atlas_labels, targets, registration, tmp / "e.pt", None, cfg()))


def test_the_full_resolution_correction_trains_saves_and_is_a_cli_switch(setup, monkeypatch):
    from napari_rrl_medsam import api
    from napari_rrl_medsam.cli import main
    from napari_rrl_medsam.core.engines import cotrain

    tmp, atlas, atlas_labels, targets, registration, encoder = setup
    list(cotrain_engine(atlas, atlas_labels, targets, registration, tmp / "f.pt", encoder, cfg(full_resolution=True)))
    model = SegmentationModel.load(tmp / "f.pt", device="cpu", precision="float32")
    assert model.config.full_resolution
    for stage in (model.parts["decoder_g"].full, model.parts["ap"].decoder.full):
        assert stage.net[-1].weight.abs().sum() > 0  # started at zero, trained
    assert model.segment(targets[0]).labels.shape == targets[0].shape
    plain = cotrain.build_parts(cfg(), TINY, 3)  # the switch off (the default): no stage at all
    assert plain["decoder_g"].full is None and plain["ap"].decoder.full is None
    seen = []
    monkeypatch.setattr(api, "cotrain", lambda *a, config=None, **k: seen.append(config))
    cli = ["cotrain", str(tmp / "none.json"), "--registration", "r.pt"]
    monkeypatch.setattr("napari_rrl_medsam.cli._few_shot_task", lambda args: (None, None))
    assert main([*cli, "--full-resolution"]) == 0 and seen[-1]["full_resolution"] is True
    assert main(cli) == 0 and "full_resolution" not in seen[-1]  # not given: the recipe's (off)


def test_mirroring_flips_half_the_slabs_left_right_and_exchanges_left_and_right_labels(setup, monkeypatch):
    from napari_rrl_medsam.cli import main

    tmp, atlas, atlas_labels, targets, registration, encoder = setup
    with pytest.raises(InputError, match="mirror pairs"):
        cfg(mirror="1-2")
    seen = recorded(monkeypatch, "_mirrored")
    config = cfg(mirror="1:2", views="axial,sagittal", steps=16)
    list(cotrain_engine(atlas, atlas_labels, targets, registration, tmp / "m.pt", encoder, config))
    flipped = 0
    for step, (x, y, axis, _), (x_out, y_out) in seen:
        assert step.mirror[0] == 0  # the working grid is RAS: voxel axis 0 runs left-right
        dim = 0 if axis == 0 else 1  # the (K, P, Q) slab of an axial view has left-right as P
        if torch.equal(x_out, x):
            assert torch.equal(y_out, y)
            continue
        flipped += 1
        assert torch.equal(x_out, x.flip(dim))
        swapped = torch.tensor([0, 2, 1])[y.flip(dim)]  # classes 1 and 2 (label values 1, 2) exchanged
        assert torch.equal(y_out, swapped) and (y == 1).any()
    assert 0 < flipped < len(seen) == 16
    assert SegmentationModel.load(tmp / "m.pt", device="cpu").segment(targets[0]).labels.shape == targets[0].shape
    configs = []
    monkeypatch.setattr("napari_rrl_medsam.api.cotrain", lambda *a, config=None, **k: configs.append(config))
    monkeypatch.setattr("napari_rrl_medsam.cli._few_shot_task", lambda args: (None, None))
    cli = ["cotrain", str(tmp / "none.json"), "--registration", "r.pt"]
    assert main([*cli, "--mirror", "freesurfer"]) == 0 and configs[-1]["mirror"] == "freesurfer"
    assert main(cli) == 0 and "mirror" not in configs[-1]  # not given: the recipe's (off)


def test_label_shares_switch_trains_on_partial_volumes(setup, monkeypatch):
    tmp, atlas, atlas_labels, targets, registration, encoder = setup
    import monai.losses

    from napari_rrl_medsam.core.segmentation import shares_to_square

    seen = []

    class Recording(monai.losses.DiceCELoss):
        def forward(self, logits, target):
            seen.append((target.dtype, tuple(target.shape)))
            return super().forward(logits, target)

    monkeypatch.setattr(monai.losses, "DiceCELoss", Recording)
    list(cotrain_engine(atlas, atlas_labels, targets, registration, tmp / "s.pt", encoder, cfg(label_shares=True)))
    assert seen and all(dtype == torch.float32 and shape == (1, 3, 4, 32, 32) for dtype, shape in seen)
    assert load_checkpoint(tmp / "s.pt", "rrl-medsam")["config"]["label_shares"] is True
    seen.clear()
    list(cotrain_engine(atlas, atlas_labels, targets, registration, tmp / "n.pt", encoder, cfg()))
    assert seen and all(shape == (1, 1, 4, 32, 32) for _, shape in seen)  # off: one nearest label per pixel
    # the shares' square slices: resized as the images are, padded with background, still summing to 1
    shares = torch.zeros(3, 2, 6, 4)
    shares[0, :, :, :2], shares[1, :, :, 2:3], shares[2, :, :, 3:] = 1, 0.25, 1
    shares[0, :, :, 2:3] = 0.75
    square = shares_to_square(shares, 12)
    assert square.shape == (3, 2, 12, 12) and torch.allclose(square.sum(0), torch.ones(2, 12, 12), atol=1e-5)
    assert torch.all(square[0, :, :, :3] == 1)  # the padding (columns 0-2 at this size) is background
    assert 0 < float(square[1].max()) < 1  # partial volumes stay partial


def test_api_and_cli_faces(setup, capsys):
    from napari_rrl_medsam import api
    from napari_rrl_medsam.cli import main

    tmp, atlas, atlas_labels, targets, registration, encoder = setup
    out = tmp / "api.pt"
    model = api.cotrain(
        atlas=(atlas, atlas_labels),
        unlabelled=targets,
        registration=registration,
        encoder=encoder,
        out=out,
        progress=False,
        config=cfg(steps=2),
    )
    assert model.source == str(out.resolve()) and model.registration is not None  # the trained model, returned
    result = api.segment(model, targets[1])
    assert np.array_equal(result.labels.affine, targets[1].affine)
    folder = tmp / "inputs"
    for i, t in enumerate(targets):
        api.save_volume(t, folder / f"t{i}.nii.gz", overwrite=True)
    assert (
        main(
            ["segment", str(folder), "--model", str(out), "--out", str(tmp / "seg"), "--auto-prompt", "--device", "cpu"]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp / "seg").iterdir()) == [
        "t0_auto_prompt.nii.gz",
        "t0_labels.nii.gz",
        "t1_auto_prompt.nii.gz",
        "t1_labels.nii.gz",
    ]
    with pytest.raises(InputError, match="registration model"):
        api.segment(registration, targets[0])
    # test-time mirroring: the CLI writes what the api gives, on the input's grid
    assert (
        main(
            [
                "segment",
                str(folder / "t1.nii.gz"),
                "--model",
                str(out),
                "--out",
                str(tmp / "mirrored"),
                "--device",
                "cpu",
                "--mirror",
                "1:2",
            ]
        )
        == 0
    )
    mirrored = api.segment(model, targets[1], mirror=[(1, 2)]).labels
    assert mirrored.shape == targets[1].shape and np.array_equal(mirrored.affine, targets[1].affine)
    assert np.array_equal(api.load_volume(tmp / "mirrored" / "t1_labels.nii.gz").array, mirrored.array)
    assert main(["segment", str(folder), "--model", str(out), "--out", str(tmp / "m2"), "--mirror", "1-2"]) == 2
    # with the atlas: the registration's labels as a prior; at full weight the labels are the warped atlas labels
    api.save_volume(atlas, tmp / "atlas.nii.gz", overwrite=True)
    api.save_volume(atlas_labels, tmp / "atlas_labels.nii.gz", overwrite=True)
    assert (
        main(
            [
                "segment",
                str(folder / "t0.nii.gz"),
                "--model",
                str(out),
                "--out",
                str(tmp / "fused"),
                "--device",
                "cpu",
                "--atlas-image",
                str(tmp / "atlas.nii.gz"),
                "--atlas-labels",
                str(tmp / "atlas_labels.nii.gz"),
                "--prior-weight",
                "1",
                "--refine-steps",
                "0",
            ]
        )
        == 0
    )
    warped = api.register(model, (atlas, atlas_labels), targets[0], refine_steps=0).warped_labels
    assert np.array_equal(api.load_volume(tmp / "fused" / "t0_labels.nii.gz").array, warped.array)
    # api.segment(atlas=) is that registration and fusion in one call; its registration comes with the result
    fused = api.segment(model, targets[0], atlas=(atlas, atlas_labels), refine_steps=0, prior_weight=0.3)
    assert np.array_equal(fused.registration.warped_labels.array, warped.array)
    assert np.array_equal(fused.labels.array, api.segment(model, targets[0], prior=warped).labels.array)
    with pytest.raises(InputError, match="not both"):
        api.segment(model, targets[0], prior=warped, atlas=(atlas, atlas_labels))
    capsys.readouterr()
    assert (
        main(["segment", str(folder), "--model", str(out), "--out", str(tmp / "x"), "--atlas-image", "a.nii.gz"]) == 2
    )
    assert "--atlas-labels" in capsys.readouterr().err
    # a co-trained model also registers: it can stand where a registration model is asked for
    again = api.cotrain(
        atlas=(atlas, atlas_labels),
        unlabelled=targets,
        registration=out,
        encoder=encoder,
        out=tmp / "again.pt",
        config=cfg(steps=1).to_dict(),
        events=True,
    )
    assert [e.stage for e in again][-1] == "co-training"


def test_nothing_is_labelled_outside_the_image_foreground(setup, monkeypatch):
    """Issue 17: a model that paints a structure everywhere still leaves the air around the anatomy unlabelled."""
    tmp, atlas, atlas_labels, targets, registration, encoder = setup
    list(cotrain_engine(atlas, atlas_labels, targets, registration, tmp / "fg.pt", encoder, cfg(steps=1)))
    model = SegmentationModel.load(tmp / "fg.pt", device="cpu")

    def everywhere(parts, x, config, keep_general=True, dtype=None):
        p = torch.zeros(len(model.classes), *x.shape)
        p[1] = 1.0
        return p, p

    monkeypatch.setattr("napari_rrl_medsam.core.segmentation.predict_probabilities", everywhere)
    image = targets[0]
    result = model.segment(image)
    level = image.array / image.array.max()
    for labels in (result.labels.array, result.auto_prompt.array):
        assert (labels[level > 0.2] == model.classes[1]).all()  # the anatomy: labelled as predicted
        assert (labels[level < 0.005] == 0).all() and labels[0, 0, 0] == 0  # the air around it: never


def test_views_cut_slabs_across_each_axis_and_prediction_averages_them(setup, monkeypatch):
    tmp, atlas, atlas_labels, targets, registration, encoder = setup
    from napari_rrl_medsam.core.engines import cotrain as engine
    from napari_rrl_medsam.core.segmentation import _view_probabilities, predict_probabilities

    with pytest.raises(InputError, match="views"):
        cfg(views="axial,oblique")
    seen = recorded(monkeypatch, "_slab")
    config = cfg(views="coronal,axial", steps=8)
    list(cotrain_engine(atlas, atlas_labels, targets, registration, tmp / "v.pt", encoder, config))
    axes = []
    for step, _, (kind, i, axis, x, y) in seen:  # each slab and its labels: the same slices of one view of the volume
        data = step.data
        found = [
            (a, s)
            for a in (0, 1, 2)
            for s in range(data.images[i].shape[a] - 3)
            if torch.equal(x, data.images[i].movedim(a, 0)[s : s + 4])
            and torch.equal(y, data.targets[i].movedim(a, 0)[s : s + 4])
        ]
        assert found and found[0][0] == axis, (kind, i)
        axes.append(axis)
    assert set(axes) == {1, 2}  # coronal and axial slabs, no sagittal ones
    assert engine.anatomy_ranges(np.pad(np.ones((2, 3, 4), int), ((1, 0), (0, 2), (3, 1)))) == ((1, 2), (0, 2), (3, 6))
    model = SegmentationModel.load(tmp / "v.pt", device="cpu")
    assert model.config.views == "coronal,axial"
    volume = torch.rand(20, 24, 16)  # not a cube: a view's axes put back wrongly would not fit
    coronal = _view_probabilities(model.parts, volume, model.config, 1)
    # the coronal view of the volume is the axial view of the volume with its last two axes exchanged
    permuted = _view_probabilities(model.parts, volume.permute(0, 2, 1).contiguous(), model.config, 2)
    for c, p in zip(coronal, permuted):
        assert c.shape == (3, 20, 24, 16) and torch.allclose(c, p.permute(0, 1, 3, 2), atol=1e-5)
    axial = _view_probabilities(model.parts, volume, model.config, 2)
    both = predict_probabilities(model.parts, volume, model.config)
    for b, c, a in zip(both, coronal, axial):
        assert torch.allclose(b, (c + a) / 2) and not torch.allclose(c, a, atol=1e-3)
    # without the general branch's mask (it still prompts): the same final probabilities and labels, no auto-prompt
    only = predict_probabilities(model.parts, volume, model.config, keep_general=False)
    assert only[0] is None and torch.allclose(only[1], both[1], atol=1e-6)
    full, lean = model.segment(targets[0]), model.segment(targets[0], auto_prompt=False)
    assert lean.auto_prompt is None and np.array_equal(full.labels.array, lean.labels.array)
    assert np.array_equal(full.working_labels, lean.working_labels)


def test_co_training_lets_go_of_the_registrations_feature_volumes_once_it_has_its_pseudo_labels(tmp_path):
    atlas, labels = phantom()
    targets = [phantom(shift=s)[0] for s in (1.0, 2.0)]
    config = reg_config(steps=1, use_features=True)
    list(registration_engine(atlas, labels, targets, tmp_path / "r.pt", LightEncoder(TINY), config))
    registration = RegistrationModel.load(tmp_path / "r.pt", device="cpu")
    held = {}
    for event in cotrain_engine(atlas, labels, targets, registration, tmp_path / "m.pt", LightEncoder(TINY), cfg()):
        held.setdefault(event.stage, len(registration._features))
    assert held["pseudo labels"] >= 1 and held["co-training"] == 0
