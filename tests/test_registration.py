"""Registration network, engine and inference on tiny volumes."""

import numpy as np
import pytest

from napari_rrl_medsam.api import InputError, Volume
from napari_rrl_medsam.core.checkpoint import load_checkpoint
from napari_rrl_medsam.core.engines.register import RegistrationTrainConfig, registration_engine
from napari_rrl_medsam.core.models.encoder import EncoderConfig, LightEncoder
from napari_rrl_medsam.core.models.registration import RegistrationConfig
from napari_rrl_medsam.core.registration import RegistrationModel
from napari_rrl_medsam.core.warp import warp

SPACING = 2.0


def phantom(shift=0.0, shape=(24, 24, 24)):
    """A smooth two-blob image and its labels, the whole thing shifted by `shift` voxels along axis 0."""
    grid = np.indices(shape).astype(np.float32)
    centre = np.array(shape, np.float32)[:, None, None, None] / 2
    centre[0] += shift
    r = np.sqrt(((grid - centre) ** 2).sum(0))
    blob2 = np.sqrt(((grid - centre - np.array([3, 4, 0])[:, None, None, None]) ** 2).sum(0))
    image = np.exp(-((r / 6) ** 2)) + 0.8 * np.exp(-((blob2 / 3) ** 2))
    labels = (r < 6).astype(np.uint8) + (blob2 < 3).astype(np.uint8)
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    affine[:3, 3] = (-10.0, 5.0, 0.0)
    return Volume(image.astype(np.float32), affine), Volume(labels, affine, kind="labels")


def config(**kw):
    base = dict(
        steps=4,
        lr=3e-3,
        smooth_weight=0.5,
        ncc_kernel=5,
        spacing=SPACING,
        use_features=False,
        augment=False,
        checkpoint_every=100,
        preview_every=2,
        device="cpu",
        network=RegistrationConfig(channels=(4, 8, 8, 8), integration_steps=4),
    )
    base.update(kw)
    return RegistrationTrainConfig(**base)


def dice(a, b):
    return 2 * np.logical_and(a > 0, b > 0).sum() / ((a > 0).sum() + (b > 0).sum())


def test_a_known_shift_is_recovered(tmp_path):
    atlas, atlas_labels = phantom()
    target, target_labels = phantom(shift=2.0)
    events = list(registration_engine(atlas, atlas_labels, [target], tmp_path / "r.pt", config=config(steps=120)))
    assert events[-1].losses["ncc"] < events[0].losses["ncc"]
    model = RegistrationModel.load(tmp_path / "r.pt", device="cpu")
    result = model.register(atlas, atlas_labels, target)
    inside = target_labels.array > 0
    ux = result.field.array[0][inside].mean() / SPACING  # voxels: target p -> atlas p + u, so u = -shift
    assert -2.6 < ux < -1.2
    assert dice(result.warped_labels.array, target_labels.array) > dice(atlas_labels.array, target_labels.array) + 0.1
    assert set(np.unique(result.warped_labels.array)) <= {0, 1, 2}  # label values kept
    assert result.folding < 0.01
    refined = model.register(atlas, atlas_labels, target, refine_steps=20)
    assert (
        dice(refined.warped_labels.array, target_labels.array)
        >= dice(result.warped_labels.array, target_labels.array) - 0.02
    )
    # working-grid pseudo labels (co-training's input) follow register()'s field, computed once per pair
    calls = []
    real_field = model.field
    model.field = lambda *a: calls.append(a) or real_field(*a)
    first = model.pseudo_labels(atlas, atlas_labels, target)
    assert np.array_equal(first, warp(atlas_labels, result.field, model.grid).array)
    assert np.array_equal(model.pseudo_labels(atlas, atlas_labels, target), first) and len(calls) == 1
    model.pseudo_labels(atlas, atlas_labels, target, 3)
    assert len(calls) == 2  # other settings: computed anew


def test_outputs_sit_on_the_target_native_grid(tmp_path):
    atlas, atlas_labels = phantom()
    target, _ = phantom(shift=1.0, shape=(24, 24, 24))
    oblique = Volume(
        target.array[::-1].copy(),
        target.affine @ np.array([[-1, 0, 0, 23], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]),
    )  # same anatomy, stored flipped
    list(registration_engine(atlas, atlas_labels, [target], tmp_path / "r.pt", config=config()))
    result = RegistrationModel.load(tmp_path / "r.pt", device="cpu").register(atlas, atlas_labels, oblique)
    jacobian = result.jacobian_determinant()
    for vol in (result.warped_image, result.warped_labels, result.displacement_magnitude(), jacobian):
        assert vol.shape == oblique.shape and np.array_equal(vol.affine, oblique.affine)
    assert jacobian.kind == "image" and (jacobian.array > 0).mean() > 0.99  # a smooth, barely folding mapping


def test_stop_and_resume_and_previews(tmp_path):
    atlas, atlas_labels = phantom()
    targets = [phantom(shift=s)[0] for s in (1.0, -1.0)]
    run = registration_engine(atlas, atlas_labels, targets, tmp_path / "r.pt", config=config(steps=6, preview_every=0))
    for event in run:
        assert event.preview is None
        if event.step == 3:
            run.close()
            break
    assert load_checkpoint(tmp_path / "r.pt", "registration")["step"] == 3
    with pytest.raises(InputError, match="resume"):
        next(registration_engine(atlas, atlas_labels, targets, tmp_path / "r.pt", config=config(steps=6)))
    # how the run is driven (cadences, steps) comes from the caller; what it trains from the checkpoint
    rest = list(
        registration_engine(
            atlas,
            atlas_labels,
            targets,
            tmp_path / "r.pt",
            resume=True,
            config=config(steps=6, checkpoint_every=1, smooth_weight=9.0),
        )
    )
    assert [e.step for e in rest] == [4, 5, 6]
    assert all(e.checkpoint is not None for e in rest)
    assert load_checkpoint(tmp_path / "r.pt", "registration")["config"]["smooth_weight"] == 0.5
    preview = rest[0].preview
    assert preview is not None and preview["pseudo_labels"].shape == atlas.shape
    assert set(np.unique(preview["pseudo_labels"])) <= {0, 1, 2}


def test_encoder_features_path(tmp_path):
    atlas, atlas_labels = phantom()
    encoder = LightEncoder(EncoderConfig(channels=(4, 8, 8, 8), embed_dim=16, neck_channels=8))
    encoder.teacher = {"name": "tiny"}
    events = list(
        registration_engine(
            atlas, atlas_labels, [phantom(shift=1.0)[0]], tmp_path / "r.pt", encoder, config(use_features=True)
        )
    )
    assert events[0].stage == "features"
    state = load_checkpoint(tmp_path / "r.pt", "registration")
    assert state["teacher"] == {"name": "tiny"} and state["network"]
    model = RegistrationModel.load(tmp_path / "r.pt", device="cpu")
    assert model.register(atlas, atlas_labels, atlas).warped_image.shape == atlas.shape
    # several atlases onto several targets: each volume's features are computed once, not once per pair
    computed, features = [], model.features
    model.features = lambda x: computed.append(1) or features(x)
    fresh = [phantom(shift=s) for s in (2.0, 3.0, 4.0)]
    targets = [phantom(shift=s)[0] for s in (0.5, 1.5)]
    cached = [model.register_atlases(fresh, t, refine_steps=0).results for t in targets]
    assert len(computed) == 5  # three atlases and two targets, not 2 x 6
    for target, results in zip(targets, cached):  # each pair as if alone: both volumes' features computed afresh
        for (image, labels), result in zip(fresh, results):
            model._features.clear()
            alone = model.register(image, labels, target, refine_steps=0)
            assert np.array_equal(alone.warped_labels.array, result.warped_labels.array)
            assert np.allclose(alone.warped_image.array, result.warped_image.array)


def test_atlas_labels_that_do_not_match_the_image_are_refused(tmp_path):
    atlas, _ = phantom()
    wrong = Volume(np.ones((20, 24, 24), np.uint8), atlas.affine, kind="labels")
    with pytest.raises(InputError, match="atlas image has shape"):
        next(registration_engine(atlas, wrong, [atlas], tmp_path / "r.pt", config=config()))
    empty = Volume(np.zeros(atlas.shape, np.uint8), atlas.affine, kind="labels")
    with pytest.raises(InputError, match="empty"):
        next(registration_engine(atlas, empty, [atlas], tmp_path / "r.pt", config=config()))


def test_api_and_cli_faces(tmp_path, capsys):
    from napari_rrl_medsam import api
    from napari_rrl_medsam.cli import main

    atlas, atlas_labels = phantom()
    target, _ = phantom(shift=1.0)
    paths = {
        name: api.save_volume(v, tmp_path / f"{name}.nii.gz")
        for name, v in (("atlas", atlas), ("atlas_seg", atlas_labels), ("target", target))
    }
    settings = config().to_dict()
    settings["network"] = RegistrationConfig(**{**settings["network"], "channels": (4, 8, 8, 8)})
    out = tmp_path / "r.pt"
    model = api.train_registration(
        atlas=(paths["atlas"], paths["atlas_seg"]),
        unlabelled=[paths["target"]],
        out=out,
        progress=False,
        config=settings,
    )
    assert model.source == str(out.resolve()) and model.grid.shape == api.load_model(out).grid.shape
    result = api.register(model, (paths["atlas"], paths["atlas_seg"]), paths["target"])
    assert np.array_equal(result.warped_labels.affine, target.affine)
    assert (
        main(
            [
                "register",
                paths["target"].as_posix(),
                "--model",
                str(out),
                "--atlas-image",
                str(paths["atlas"]),
                "--atlas-labels",
                str(paths["atlas_seg"]),
                "--out",
                str(tmp_path / "res"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "folding" in capsys.readouterr().out
    written = api.load_volume(tmp_path / "res" / "target_pseudo_labels.nii.gz")
    assert written.kind == "labels" and np.array_equal(written.affine, target.affine)
    with pytest.raises(InputError, match="RegistrationTrainConfig fields are"):
        api.train_registration(atlas=(atlas, atlas_labels), unlabelled=[target], config={"bogus": 1})
    with pytest.raises(InputError, match=r"atlas is an \(image, labels\) pair"):
        api.train_registration(atlas=atlas, unlabelled=[target])
    with pytest.raises(InputError, match="needs its labels"):
        api.train_registration(atlas=(atlas, None), unlabelled=[target])
    with pytest.raises(InputError, match="not both"):
        api.train_registration(api.sample_task(check=False), atlas=(atlas, atlas_labels))
    # whatever fills the atlas-labels slot is a label map: an integer map loaded as an image is warped as labels
    (tmp_path / "labels").mkdir()
    in_task = api.save_volume(Volume(atlas_labels.array, atlas.affine), tmp_path / "labels" / "atlas.nii.gz")
    assert api.load_volume(in_task).kind == "labels"  # a task's labels/ folder says what its files are
    as_image = api.load_volume(paths["atlas_seg"], kind="image")
    warped = api.register(model, (atlas, as_image), target, refine_steps=0).warped_labels
    assert warped.kind == "labels" and set(np.unique(warped.array)) <= {0, 1, 2}
    for bad, match in (
        (atlas, "non-integer"),
        (atlas_labels.with_array(-atlas_labels.array.astype(np.int16)), "negative"),
    ):
        with pytest.raises(InputError, match=match):
            api.register(model, (atlas, bad), target)
    moved = np.array(atlas.affine)
    moved[:3, 3] += 7.0
    with pytest.raises(InputError, match="different affines"):
        api.register(model, (atlas, Volume(atlas_labels.array, moved, "labels")), target)


def test_dice_coupling_pulls_the_atlas_labels_onto_a_given_segmentation(tmp_path):
    atlas, atlas_labels = phantom()
    target_image, target_labels = phantom(shift=2.5)
    noise = np.random.default_rng(0).normal(0.5, 0.01, target_image.shape).astype(np.float32)
    flat = target_image.with_array(noise)  # nothing for NCC to match (a constant image is refused: no signal)
    dices = {}
    for weight in (0.0, 1.0):
        segmentations = [target_labels] if weight else ()
        events = list(
            registration_engine(
                atlas,
                atlas_labels,
                [flat],
                tmp_path / f"r{weight}.pt",
                config=config(steps=60, lr=1e-2, dice_weight=weight),
                segmentations=segmentations,
            )
        )
        assert ("dice" in events[-1].losses) == bool(weight)
        result = RegistrationModel.load(tmp_path / f"r{weight}.pt", device="cpu").register(atlas, atlas_labels, flat)
        dices[weight] = dice(result.warped_labels.array, target_labels.array)
    before = dice(atlas_labels.array, target_labels.array)
    assert dices[1.0] > before + 0.05 and dices[1.0] > dices[0.0] + 0.05
    with pytest.raises(InputError, match="one segmentation per unlabelled volume"):
        next(registration_engine(atlas, atlas_labels, [flat], tmp_path / "x.pt", config=config(dice_weight=1.0)))


def test_validation_dice_is_reported_by_the_engine_and_is_that_of_the_saved_model(tmp_path, monkeypatch):
    from napari_rrl_medsam import api
    from napari_rrl_medsam.core import checkpoint

    atlas, atlas_labels = phantom()
    target, target_labels = phantom(shift=2.0)
    config_ = config(steps=4, validate_every=2)
    events = list(
        registration_engine(
            atlas, atlas_labels, [target], tmp_path / "r.pt", config=config_, validation=[(target, target_labels)]
        )
    )
    assert [bool(e.metrics) for e in events] == [False, True, False, True]
    reads = []
    real = checkpoint.load_checkpoint
    monkeypatch.setattr(checkpoint, "load_checkpoint", lambda *a, **k: reads.append(a) or real(*a, **k))
    model = api.load_model(tmp_path / "r.pt", device="cpu")
    assert len(reads) == 1 and model.source == str((tmp_path / "r.pt").resolve())  # the file is read once
    warped = model.register(atlas, atlas_labels, target, refine_steps=0).warped_labels
    expected = api.evaluate(warped, target_labels, hd95=False).mean_dice
    assert events[-1].metrics["val_dice_registration"] == pytest.approx(expected, abs=1e-6)
    none = list(registration_engine(atlas, atlas_labels, [target], tmp_path / "n.pt", config=config_))
    assert not any(e.metrics for e in none)
    checkpoint.save_checkpoint({"kind": "distill", "version": 1, "step": 1}, tmp_path / "encoder.pt")
    with pytest.raises(InputError, match="not a model"):
        api.load_model(tmp_path / "encoder.pt")
