"""Few-shot: a task with several labelled volumes (the atlas and more, e.g. corrected results) trains the
registration with each as a moving image, fuses their warped labels into the pseudo labels, co-trains on all of
them, and a trained run continues with added labelled volumes (fine-tuning, its step count and label table kept).
Tiny volumes."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_cotrain import TINY, cfg
from test_registration import config as reg_config
from test_registration import phantom

from napari_rrl_medsam import api
from napari_rrl_medsam.api import InputError
from napari_rrl_medsam.api.volumes import training_volumes
from napari_rrl_medsam.core.checkpoint import load_checkpoint
from napari_rrl_medsam.core.engines.cotrain import cotrain_engine
from napari_rrl_medsam.core.engines.register import registration_engine
from napari_rrl_medsam.core.models.encoder import LightEncoder
from napari_rrl_medsam.core.registration import RegistrationModel


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.sum(a & b) / (np.sum(a) + np.sum(b))


def named(volume, name: str):
    """The volume as if read from `<name>.nii.gz` (names are what checkpoints record)."""
    return replace(volume, path=Path(f"{name}.nii.gz"))


def volumes():
    """The atlas, a second labelled volume (another anatomy: shifted) and two unlabelled volumes."""
    atlas, labels = (named(v, "atlas") for v in phantom())
    second, second_labels = (named(v, "second") for v in phantom(shift=4.0))
    targets = [named(phantom(shift=s)[0], f"u{i}") for i, s in enumerate((1.0, 3.0))]
    return (atlas, labels), (second, second_labels), targets


def test_the_fused_pseudo_labels_follow_the_labelled_volume_that_looks_like_the_target(tmp_path):
    (atlas, labels), second, _ = volumes()
    target = named(phantom()[0], "target")  # looks exactly like the atlas; the second volume's anatomy is shifted
    list(registration_engine(atlas, labels, [second[0]], tmp_path / "r.pt", config=reg_config(steps=1, lr=0.0)))
    model = RegistrationModel.load(tmp_path / "r.pt", device="cpu")
    # the second volume listed first: the vote follows the atlas because it agrees, not because of its place
    fused = model.fused_pseudo_labels([second, (atlas, labels)], target, refine_steps=0)
    alone = [model.pseudo_labels(*pair, target, refine_steps=0) for pair in (second, (atlas, labels))]
    truth = alone[1]
    assert dice(fused == 1, truth == 1) > 0.97 and dice(fused == 2, truth == 2) > 0.9
    assert dice(alone[0] == 2, truth == 2) < 0.5  # the second volume alone would have labelled it wrong
    other = replace(second[1], array=np.where(second[1].array == 2, 5, second[1].array).astype(np.uint8))
    with pytest.raises(InputError, match="has labels \\[5\\] that atlas has not"):
        model.fused_pseudo_labels([(atlas, labels), (second[0], other)], target, refine_steps=0)


def test_a_task_with_two_labelled_volumes_trains_registration_and_cotraining_on_both(tmp_path):
    (atlas, labels), second, targets = volumes()
    events = list(
        registration_engine(
            atlas, labels, targets, tmp_path / "r.pt", config=reg_config(steps=6, preview_every=1), labelled=[second]
        )  # fmt: skip
    )
    moving = {e.preview["moving"] for e in events if e.stage == "registration"}
    assert moving == {0, 1}  # every labelled volume is a moving image
    assert load_checkpoint(tmp_path / "r.pt")["labelled"] == ["atlas", "second"]
    registration = RegistrationModel.load(tmp_path / "r.pt", device="cpu")
    run = cotrain_engine(
        atlas, labels, targets, registration, tmp_path / "m.pt", LightEncoder(TINY),
        cfg(steps=6, preview_every=1, atlas_probability=1.0), labelled=[second],
    )  # fmt: skip
    events = list(run)
    assert {e.preview["case"] for e in events if e.stage == "co-training"} == {0, 1}  # both with their true labels
    pseudo = [e.preview["pseudo_labels"] for e in events if e.stage == "pseudo labels"]
    fused = [registration.fused_pseudo_labels([(atlas, labels), second], t) for t in targets]
    assert all(np.array_equal(a, b) for a, b in zip(pseudo, fused))  # the unlabelled volumes' labels are fused
    state = load_checkpoint(tmp_path / "m.pt", "rrl-medsam")
    assert state["labelled"] == ["atlas", "second"] and state["classes"] == [0, 1, 2]
    other = replace(second[1], array=np.where(second[1].array == 2, 3, second[1].array).astype(np.uint8))
    with pytest.raises(InputError, match="second has labels \\[3\\] that atlas has not"):
        next(registration_engine(atlas, labels, targets, tmp_path / "x.pt", config=reg_config(),
                                 labelled=[(second[0], other)]))  # fmt: skip


def test_synthetic_pairs_come_from_every_labelled_volume(tmp_path):
    (atlas, labels), second, targets = volumes()
    list(registration_engine(atlas, labels, targets, tmp_path / "r.pt", config=reg_config(steps=2)))
    registration = RegistrationModel.load(tmp_path / "r.pt", device="cpu")
    config = cfg(steps=8, preview_every=1, atlas_probability=0.0, synthetic_probability=1.0)
    events = list(
        cotrain_engine(
            atlas, labels, targets, registration, tmp_path / "m.pt", LightEncoder(TINY), config, labelled=[second]
        )  # fmt: skip
    )
    assert [e.total for e in events if e.stage == "synthetic pairs"][-1] == 4  # 2 labelled x 2 unlabelled fields
    assert {e.preview["case"] for e in events if e.stage == "co-training"} == {0, 1}


def test_a_trained_run_continues_with_added_labelled_volumes(tmp_path):
    (atlas, labels), second, targets = volumes()
    run, encoder = tmp_path / "run", LightEncoder(TINY)
    reg, cot = reg_config(steps=3), cfg(steps=4)
    api.train_one_shot(atlas=(atlas, labels), unlabelled=targets, encoder=encoder, out=run, registration=reg,
                       cotrain=cot, progress=False)  # fmt: skip
    assert load_checkpoint(run / "rrl_medsam.pt")["labelled"] == ["atlas"]
    # the second volume was unlabelled before: now it is labelled (a corrected result), so no longer unlabelled
    more = tmp_path / "more"
    model = api.continue_training(
        run, atlas=(atlas, labels), unlabelled=[*targets, second[0]], labelled=[second], encoder=encoder,
        out=more, registration=reg_config(steps=2), cotrain=cfg(steps=3), progress=False,
    )  # fmt: skip
    r, m = load_checkpoint(more / "registration.pt"), load_checkpoint(more / "rrl_medsam.pt")
    assert (r["step"], m["step"]) == (3 + 2, 4 + 3) and r["complete"] and m["complete"]
    assert r["labelled"] == m["labelled"] == ["atlas", "second"]
    assert m["classes"] == [0, 1, 2] and model.classes == [0, 1, 2]
    # the added steps carry on the poly decay over the whole count: the last (7th) step's rates are step 7 of 7's
    rates = [g["lr"] for g in m["optimizer"]["param_groups"]]
    config = m["config"]
    assert rates == pytest.approx([config["encoder_lr"] * (1 / 7) ** 0.9, config["lr"] * (1 / 7) ** 0.9])
    assert m["first_step"] == 4
    assert m["initialised_from"] == str(run / "rrl_medsam.pt")
    assert r["initialised_from"] == str(run / "registration.pt")
    # the continued model starts from the run's weights, not anew: with nothing learnt (rates 0) it is the run's
    same = tmp_path / "same"
    api.continue_training(
        run, atlas=(atlas, labels), unlabelled=targets, labelled=[second], encoder=encoder, out=same,
        registration=reg_config(steps=1, lr=0.0), cotrain=cfg(steps=1, lr=0.0, encoder_lr=0.0, use_mutual_ema=False),
        progress=False,
    )  # fmt: skip
    before, after = load_checkpoint(run / "rrl_medsam.pt"), load_checkpoint(same / "rrl_medsam.pt")
    for part in before["parts"]:  # (the weights; normalisation statistics follow the data)
        weights = before["parts"][part]
        assert all(
            np.array_equal(weights[k], after["parts"][part][k])
            for k in weights
            if "running" not in k and "num_batches" not in k
        )
    other = replace(second[1], array=np.where(second[1].array == 2, 3, second[1].array).astype(np.uint8))
    with pytest.raises(InputError, match="label values"):  # another label set: refused, nothing trained
        api.continue_training(
            run, atlas=(atlas, other), unlabelled=targets, encoder=encoder, out=tmp_path / "x",
            registration=reg_config(steps=1), cotrain=cfg(steps=1), progress=False,
        )  # fmt: skip
    with pytest.raises(InputError, match="another folder"):
        api.continue_training(run, atlas=(atlas, labels), unlabelled=targets, out=run, progress=False)
    with pytest.raises(InputError, match="no registration.pt"):
        api.continue_training(tmp_path, atlas=(atlas, labels), unlabelled=targets, out=more, progress=False)


def test_a_task_takes_further_labelled_volumes_by_id(tmp_path):
    from conftest import blobs, oblique_affine, write_nifti

    root = tmp_path / "study"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for name, seed in (("atlas", 0), ("u1", 1), ("u2", 2)):
        labels = blobs(seed=seed)
        write_nifti(root / "images" / f"{name}.nii.gz", (labels * 30.0 + 10).astype(np.float32), oblique_affine())
        write_nifti(root / "labels" / f"{name}.nii.gz", labels, oblique_affine())
    (root / "labels" / "u2.nii.gz").unlink()
    task = api.load_task(root, atlas="atlas", n_validation=0)  # u1 has labels: evaluation; u2 unlabelled
    assert [c.id for c in task.evaluation] == ["u1"] and [c.id for c in task.unlabelled] == ["u2"]
    task = api.load_task(root, atlas="atlas", labelled=["u1"])
    assert [c.id for c in task.labelled] == ["u1"] and not task.evaluation and "+ 1 labelled" in task.summary()
    image, labels, targets, more = training_volumes(task, None, ())
    assert [v.name for v in targets] == ["u2"] and [v.name for v, _ in more] == ["u1"]
    with pytest.raises(InputError, match="no label file for 'u2'"):
        api.load_task(root, atlas="atlas", labelled=["u2"])
    with pytest.raises(InputError, match="no unlabelled or evaluation volume 'u9'"):
        api.load_task(root, atlas="atlas", labelled=["u9"])


def test_the_cli_continues_a_run_with_a_labelled_set(tmp_path, capsys):
    from napari_rrl_medsam.cli import main
    from napari_rrl_medsam.core.io import save_volume

    (atlas, labels), second, targets = volumes()
    task = tmp_path / "task"
    for name, volume in (("atlas", atlas), ("u0", targets[0]), ("u1", targets[1])):
        save_volume(volume, task / "images" / f"{name}.nii.gz")
    save_volume(labels, task / "labels" / "atlas.nii.gz")
    run = tmp_path / "run"
    api.train_one_shot(task, encoder=LightEncoder(TINY), out=run, registration=reg_config(steps=2),
                       cotrain=cfg(steps=2), progress=False)  # fmt: skip
    corrected = tmp_path / "labelled"  # u1 corrected and added, as the correction widget does
    api.add_labelled(corrected, api.load_volume(task / "images" / "u1.nii.gz"), second[1], "u1")
    out = tmp_path / "more"
    args = ["continue", str(run), str(task), "--labelled", str(corrected), "--out", str(out)]
    assert main([*args, "--registration-steps", "1", "--cotrain-steps", "2", "--device", "cpu"]) == 0
    state = load_checkpoint(out / "rrl_medsam.pt")
    assert state["step"] == 4 and state["labelled"] == ["atlas", "u1"]
    assert "rrl_medsam.pt" in capsys.readouterr().out
    assert main([*args, "--device", "cpu"]) == 2  # out exists: never replaced without --resume
    assert "exists" in capsys.readouterr().err


def test_labelled_volumes_alone_train_fully_supervised(tmp_path):
    (atlas, labels), second, targets = volumes()
    list(registration_engine(atlas, labels, targets, tmp_path / "r.pt", config=reg_config(steps=1)))
    registration = RegistrationModel.load(tmp_path / "r.pt", device="cpu")
    run = cotrain_engine(atlas, labels, [], registration, tmp_path / "s.pt", LightEncoder(TINY),
                         cfg(steps=3, atlas_probability=1.0), labelled=[second])  # fmt: skip
    assert [e.stage for e in run] == ["co-training"] * 3  # no pseudo labels to make
    with pytest.raises(InputError, match="atlas_probability=1"):
        next(cotrain_engine(atlas, labels, [], registration, tmp_path / "t.pt", LightEncoder(TINY), cfg()))


def test_a_stopped_continuation_resumes_to_the_same_end(tmp_path):
    (atlas, labels), second, targets = volumes()
    list(registration_engine(atlas, labels, targets, tmp_path / "a.pt", config=reg_config(steps=2)))
    run = registration_engine(atlas, labels, targets, tmp_path / "b.pt", config=reg_config(steps=3),
                              init=tmp_path / "a.pt", proceed=True, labelled=[second])  # fmt: skip
    assert next(run).step == 3  # the model's step count goes on
    run.close()  # stopped: saved at step 3
    (tmp_path / "a.pt").unlink()  # the run it started from is no longer needed to resume
    rest = registration_engine(atlas, labels, targets, tmp_path / "b.pt", config=reg_config(steps=3), resume=True,
                               init=tmp_path / "a.pt", proceed=True, labelled=[second])  # fmt: skip
    assert [e.step for e in rest if e.stage == "registration"] == [4, 5]
    assert load_checkpoint(tmp_path / "b.pt")["complete"]


def test_segment_fuses_every_labelled_volume_into_its_registration_prior(tmp_path):
    (atlas, labels), second, targets = volumes()
    list(registration_engine(atlas, labels, targets, tmp_path / "r.pt", config=reg_config(steps=2)))
    registration = RegistrationModel.load(tmp_path / "r.pt", device="cpu")
    list(cotrain_engine(atlas, labels, targets, registration, tmp_path / "m.pt", LightEncoder(TINY), cfg(steps=1)))
    model = api.load_model(tmp_path / "m.pt", "cpu")
    target = named(phantom(shift=4.0)[0], "target")  # the second labelled volume's anatomy
    alone = api.segment(model, target, atlas=(atlas, labels), refine_steps=0, prior_weight=0.45)
    fused = api.segment(model, target, atlas=(atlas, labels), labelled=[second], refine_steps=0, prior_weight=0.45)
    assert len(fused.registration.results) == 2 and alone.registration.warped_labels is not None
    truth = second[1].array
    assert dice(fused.labels.array == 2, truth == 2) > dice(alone.labels.array == 2, truth == 2) + 0.2
    with pytest.raises(InputError, match="give atlas= too"):
        api.segment(model, target, labelled=[second])
