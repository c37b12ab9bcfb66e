"""Propagated atlases: a co-trained model's segmentations of the unlabelled volumes kept in a marked folder, fused
into the registration prior, resumable, never taken for true labels. Tiny volumes and models."""

import warnings

import numpy as np
import pytest
from test_cotrain import TINY, cfg
from test_few_shot import volumes
from test_registration import config as reg_config

from napari_rrl_medsam import api
from napari_rrl_medsam.api import InputError
from napari_rrl_medsam.api.volumes import training_volumes
from napari_rrl_medsam.core.engines.cotrain import cotrain_engine
from napari_rrl_medsam.core.engines.register import registration_engine
from napari_rrl_medsam.core.io import save_volume
from napari_rrl_medsam.core.models.encoder import LightEncoder
from napari_rrl_medsam.core.registration import RegistrationModel
from napari_rrl_medsam.core.task import PROPAGATED


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny co-trained model, its atlas and its two unlabelled volumes written as files."""
    root = tmp_path_factory.mktemp("propagation")
    (atlas, labels), _, targets = volumes()
    list(registration_engine(atlas, labels, targets, root / "r.pt", config=reg_config(steps=2)))
    registration = RegistrationModel.load(root / "r.pt", device="cpu")
    list(cotrain_engine(atlas, labels, targets, registration, root / "m.pt", LightEncoder(TINY), cfg(steps=2)))
    files = [save_volume(t, root / "unlabelled" / f"u{i}.nii.gz") for i, t in enumerate(targets)]
    return api.load_model(root / "m.pt", "cpu"), (atlas, labels), files, root


def test_propagated_atlases_are_the_models_labels_of_each_volume_in_a_marked_labelled_set(trained, tmp_path):
    model, _, files, root = trained
    out = tmp_path / "propagated"
    assert list(api.propagate_atlases(model, [root / "unlabelled"], out)) == [("u0", True), ("u1", True)]
    assert (out / PROPAGATED).is_file()
    for path in files:
        image = api.load_volume(out / "images" / path.name)
        labels = api.load_volume(out / "labels" / path.name, kind="labels")
        source = api.load_volume(path)
        assert np.allclose(image.affine, source.affine) and np.array_equal(image.array, source.array)
        assert np.array_equal(labels.array, model.segment(source, auto_prompt=False).labels.array)
    assert [case.id for case in api.labelled_set(out)] == ["u0", "u1"]


def test_a_stopped_propagation_resumes_and_keeps_what_is_done(trained, tmp_path):
    model, _, files, _ = trained
    out = tmp_path / "propagated"
    list(api.propagate_atlases(model, files, out))
    kept = (out / "labels" / "u0.nii.gz").stat().st_mtime_ns
    (out / "labels" / "u1.nii.gz").unlink()  # stopped after u1's image was written
    assert list(api.propagate_atlases(model, files, out)) == [("u0", False), ("u1", True)]
    assert (out / "labels" / "u0.nii.gz").stat().st_mtime_ns == kept
    assert list(api.propagate_atlases(model, files, out, overwrite=True)) == [("u0", True), ("u1", True)]


def test_training_and_corrections_refuse_a_folder_of_propagated_atlases(trained, tmp_path):
    model, (atlas, labels), files, _ = trained
    out = tmp_path / "propagated"
    list(api.propagate_atlases(model, files, out))
    with pytest.raises(InputError, match="propagated atlases .* not corrected labels"):
        training_volumes(None, (atlas, labels), files, labelled=out)
    with pytest.raises(InputError, match="add corrected volumes to a labelled set of their own"):
        api.add_labelled(out, atlas, labels, "atlas")  # the correction widget's 'Add to labelled set'


def test_propagation_refuses_a_labelled_set_and_another_models_folder(trained, tmp_path):
    model, (atlas, labels), files, _ = trained
    corrected = tmp_path / "labelled"
    api.add_labelled(corrected, atlas, labels, "atlas")
    with pytest.raises(InputError, match="labelled set of corrected volumes"):
        list(api.propagate_atlases(model, files, corrected))
    out = tmp_path / "propagated"
    list(api.propagate_atlases(model, files[:1], out))
    (out / PROPAGATED).write_text('{"classes": [0, 1, 2, 3]}')
    with pytest.raises(InputError, match="labels \\[0, 1, 2, 3\\], not \\[0, 1, 2\\]"):
        list(api.propagate_atlases(model, files, out))
    with pytest.raises(InputError, match="co-trained model"):
        list(api.propagate_atlases(model.registration, files, tmp_path / "other"))


def test_segment_fuses_the_atlas_and_the_propagated_atlases_into_its_prior(trained, tmp_path):
    model, (atlas, labels), files, _ = trained
    out = tmp_path / "propagated"
    list(api.propagate_atlases(model, files, out))
    lacking = api.load_volume(out / "labels" / "u0.nii.gz", kind="labels")  # a model that never predicts 2 there
    save_volume(lacking.with_array(np.where(lacking.array == 2, 1, lacking.array)), lacking.path, overwrite=True)
    target = api.load_volume(files[1])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".* lacks labels")  # a prediction is not the user's to correct
        result = api.segment(model, target, atlas=(atlas, labels), labelled=out, refine_steps=0)
    assert len(result.registration.results) == 3  # the atlas and both propagated atlases
    assert result.labels.array.shape == target.array.shape and np.allclose(result.labels.affine, target.affine)
    (out / PROPAGATED).unlink()  # the same folder as a labelled set of corrections: a missing structure is news
    with pytest.warns(UserWarning, match="u0 lacks labels \\[2\\]"):
        api.segment(model, target, atlas=(atlas, labels), labelled=out, refine_steps=0)


def test_the_cli_propagates_and_segments_with_the_propagated_prior(trained, tmp_path, capsys):
    from napari_rrl_medsam.cli import main

    model, (atlas, labels), files, root = trained
    out = tmp_path / "propagated"
    assert main(["propagate", str(root / "unlabelled"), "--model", str(root / "m.pt"), "--out", str(out)]) == 0
    assert "u1: segmented" in capsys.readouterr().out
    atlas_files = [save_volume(v, tmp_path / f"atlas_{k}.nii.gz") for k, v in (("image", atlas), ("labels", labels))]
    args = ["segment", str(files[0]), "--model", str(root / "m.pt"), "--out", str(tmp_path / "seg")]
    args += ["--atlas-image", str(atlas_files[0]), "--atlas-labels", str(atlas_files[1]), "--labelled", str(out)]
    assert main([*args, "--refine-steps", "0", "--device", "cpu"]) == 0
    assert (tmp_path / "seg" / "u0_labels.nii.gz").is_file()
    assert main(["propagate", str(files[0]), "--task", str(root), "--model", str(root / "m.pt"), "--out", "x"]) == 2
    assert "one of the two" in capsys.readouterr().err


def test_a_one_shot_run_ends_with_its_propagated_atlases_and_scores_their_prior(tmp_path):
    (atlas, labels), second, targets = volumes()
    run, encoder = tmp_path / "run", LightEncoder(TINY)
    common = dict(atlas=(atlas, labels), unlabelled=targets, encoder=encoder, out=run, propagate=True, events=True)
    train = dict(registration=reg_config(steps=2), cotrain=cfg(steps=2))
    events = list(api.train_one_shot(**common, **train, validation=[second]))
    assert [(e.stage, e.step, e.total) for e in events[-3:]] == [
        ("propagation", 1, 2),
        ("propagation", 2, 2),
        ("evaluation", 1, 1),
    ]  # after the last co-training step, before the comparison
    model, folder = api.load_model(run / "rrl_medsam.pt", "cpu"), run / "propagated"
    assert [case.id for case in api.labelled_set(folder)] == ["u0", "u1"] and (folder / PROPAGATED).is_file()
    for target in targets:
        saved = api.load_volume(folder / "labels" / f"{target.name}.nii.gz", kind="labels")
        assert np.array_equal(saved.array, model.segment(target, auto_prompt=False).labels.array)
    fused = api.segment(model, second[0], atlas=(atlas, labels), labelled=folder).labels
    expected = api.evaluate(fused, second[1], hd95=False).mean_dice
    assert events[-1].metrics["dice_propagated"] == pytest.approx(expected)
    assert set(events[-1].metrics) == {"dice_registration", "dice_model", "dice_prior", "dice_propagated"}
    prior = api.segment(model, second[0], atlas=(atlas, labels)).labels
    assert events[-1].metrics["dice_prior"] == pytest.approx(api.evaluate(prior, second[1], hd95=False).mean_dice)
    kept = [(folder / "labels" / f"{t.name}.nii.gz").stat().st_mtime_ns for t in targets]
    again = list(api.train_one_shot(**common, **train, validation=[], resume=True))  # a finished run, resumed
    trained_or_propagated = [e.stage for e in again if e.stage in ("registration", "co-training", "propagation")]
    assert trained_or_propagated == ["propagation"] * 2  # nothing trained, nothing segmented again
    assert [(folder / "labels" / f"{t.name}.nii.gz").stat().st_mtime_ns for t in targets] == kept
    few = tmp_path / "few"  # with further labelled volumes propagated atlases lower the fusion: none made
    api.train_one_shot(**{**common, "out": few, "events": False}, **train, labelled=[second], validation=[],
                       progress=False)  # fmt: skip
    assert (few / "rrl_medsam.pt").is_file() and not (few / "propagated").exists()


def test_the_cli_trains_a_one_shot_run_with_its_propagated_atlases_and_compares(tmp_path, capsys):
    from napari_rrl_medsam.cli import main
    from napari_rrl_medsam.core.checkpoint import load_checkpoint

    (atlas, labels), (image, truth), targets = volumes()
    task = tmp_path / "task"
    for name, volume in (("atlas", atlas), ("u0", targets[0]), ("u1", targets[1]), ("ev", image)):
        save_volume(volume, task / "images" / f"{name}.nii.gz")
    save_volume(labels, task / "labels" / "atlas.nii.gz")
    save_volume(truth, task / "labels" / "ev.nii.gz")  # a labelled volume besides the atlas: the evaluation volume
    run = tmp_path / "run"
    args = ["train", str(task), "--atlas", "atlas", "--out", str(run), "--quick", "--device", "cpu"]
    args += ["--registration-steps", "2", "--cotrain-steps", "2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"propagated atlases in {run / 'propagated'}/" in printed
    for name in ("registration", "RRL-MedSAM", "RRL-MedSAM + registration prior", "RRL-MedSAM + propagated"):
        assert f"\n  {name} " in printed
    assert [case.id for case in api.labelled_set(run / "propagated")] == ["u0", "u1"]
    assert load_checkpoint(run / "registration.pt")["step"] == 2 and load_checkpoint(run / "rrl_medsam.pt")["step"] == 2
    assert main(args) == 2 and "already holds a run: pass --resume" in capsys.readouterr().err
    kept = (run / "propagated" / "labels" / "u0.nii.gz").stat().st_mtime_ns
    assert main([*args, "--resume", "--no-compare"]) == 0  # finished: nothing trained or segmented again
    assert "validation Dice" not in capsys.readouterr().out and load_checkpoint(run / "rrl_medsam.pt")["step"] == 2
    assert (run / "propagated" / "labels" / "u0.nii.gz").stat().st_mtime_ns == kept
