"""Bad input ends in a clear error before any work, and nothing is lost (issue 15). Tiny data throughout."""

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_rrl_medsam import cli
from napari_rrl_medsam.api import InputError, Volume
from napari_rrl_medsam.core.checkpoint import load_checkpoint, save_checkpoint
from napari_rrl_medsam.core.engines.cotrain import CotrainConfig
from napari_rrl_medsam.core.engines.register import RegistrationTrainConfig, registration_engine

from conftest import blobs, write_nifti
from test_registration import config as reg_config
from test_registration import phantom


def test_evaluate_csv_never_replaces_a_file_without_overwrite(tmp_path, capsys):
    path = write_nifti(tmp_path / "a_seg.nii.gz", blobs(), np.eye(4))
    precious = tmp_path / "dataset.json"
    precious.write_text('{"name": "mine"}')
    assert cli.main(["evaluate", str(path), str(path), "--csv", str(precious)]) == 2
    assert "--overwrite" in capsys.readouterr().err and precious.read_text() == '{"name": "mine"}'
    assert cli.main(["evaluate", str(path), str(path), "--csv", str(precious), "--overwrite"]) == 0
    assert precious.read_text().startswith("label,name,dice,hd95_mm")
    assert cli.main(["evaluate", str(path), str(path), "--csv", str(tmp_path)]) == 2  # a folder
    assert "is a folder" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_segment_refuses_inputs_that_would_write_one_output_before_any_work(tmp_path, capsys):
    folder = tmp_path / "scans"
    folder.mkdir()
    image = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)
    write_nifti(folder / "scan.nii", image, np.eye(4))
    write_nifti(folder / "scan.nii.gz", image, np.eye(4))
    (folder / "._scan2.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS metadata, not a volume
    # the model is never loaded: the clash is found first
    code = cli.main(["segment", str(folder), "--model", str(tmp_path / "none.pt"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "scan.nii" in err and "scan_labels.nii.gz" in err and "AppleDouble" not in err
    assert not (tmp_path / "o").exists()


def test_register_checks_every_output_before_any_work(tmp_path, capsys):
    target = write_nifti(tmp_path / "t.nii.gz", np.zeros((8, 8, 8), np.float32), np.eye(4))
    out = tmp_path / "out"
    out.mkdir()
    (out / "t_jacobian.nii.gz").write_bytes(b"mine")
    args = ["register", str(target), "--model", str(tmp_path / "none.pt"), "--atlas-image", str(target),
            "--atlas-labels", str(target), "--out", str(out)]
    assert cli.main(args) == 2
    assert "t_jacobian.nii.gz exists" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["t_jacobian.nii.gz"]  # no partial set written
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert cli.main([*args[:-1], str(afile / "sub")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_non_finite_weights_are_refused_on_save_and_on_load(tmp_path):
    good = {"kind": "registration", "network": {"w": torch.ones(3)}}
    path = save_checkpoint(good, tmp_path / "r.pt")
    with pytest.raises(InputError, match="NaN or infinity.*unchanged"):
        save_checkpoint({"kind": "registration", "network": {"w": torch.tensor([1.0, float("nan")])}}, path)
    assert torch.equal(load_checkpoint(path)["network"]["w"], torch.ones(3))  # the last good one is intact
    torch.save({"kind": "registration", "network": {"w": torch.tensor([float("inf")])}}, tmp_path / "bad.pt")
    with pytest.raises(InputError, match="NaN or infinite weights.*network.w"):
        load_checkpoint(tmp_path / "bad.pt")


class Anything:
    """A Python object: a file holding one is a general pickle, not a checkpoint of weights."""


def test_a_pickle_is_not_loaded_and_the_message_does_not_advise_unpickling(tmp_path):
    torch.save({"kind": "registration", "object": Anything()}, tmp_path / "p.pt")
    with pytest.raises(InputError) as info:
        load_checkpoint(tmp_path / "p.pt")
    assert "not a checkpoint this product wrote" in str(info.value) and "weights_only=False" not in str(info.value)


def test_training_stops_on_a_non_finite_loss_and_keeps_finite_weights(tmp_path):
    atlas, labels = phantom()
    broken = phantom(shift=1.0)[0].array.copy()
    broken[3, 3, 3] = np.nan  # an in-memory volume (files with NaN are refused at load)
    with pytest.raises(InputError, match="diverged at step 1"):
        list(registration_engine(atlas, labels, [Volume(broken, atlas.affine)], tmp_path / "r.pt", config=reg_config()))
    assert load_checkpoint(tmp_path / "r.pt")["step"] == 0  # what was saved on the way out is finite


def test_settings_are_coerced_or_refused_when_given():
    config = CotrainConfig(lr=np.logspace(-3, -2, 2)[0], steps=np.int64(7), validate_every=10.0)
    assert type(config.lr) is float and type(config.steps) is int and type(config.validate_every) is int
    assert config.to_dict()["lr"] == pytest.approx(1e-3)
    for bad, match in (({"steps": 0}, "steps must be at least 1"), ({"steps": -3}, "at least 1"),
                       ({"steps": "10"}, "steps must be an int"), ({"atlas_probability": 1.5}, "between 0 and 1"),
                       ({"lr": float("nan")}, "finite"), ({"use_prompt": "no"}, "must be a bool")):
        with pytest.raises(InputError, match=match):
            CotrainConfig(**bad)
    with pytest.raises(InputError, match="checkpoint_every must be at least 1"):
        RegistrationTrainConfig(checkpoint_every=0)


def test_cli_steps_zero_is_refused_and_writes_nothing(tmp_path, capsys):
    from napari_rrl_medsam.data.sample import SAMPLE_DIR

    out = tmp_path / "r.pt"
    assert cli.main(["train-registration", str(SAMPLE_DIR), "--steps", "0", "--out", str(out)]) == 2
    assert "steps must be at least 1" in capsys.readouterr().err and not out.exists()


def test_resuming_onto_another_task_is_refused(tmp_path):
    atlas, labels = phantom()
    targets = [phantom(shift=1.0)[0]]
    list(registration_engine(atlas, labels, targets, tmp_path / "r.pt", config=reg_config(steps=2)))
    more = labels.with_array(np.where(labels.array == 2, 3, labels.array).astype(np.uint8))
    with pytest.raises(InputError, match="label values"):
        list(registration_engine(atlas, more, targets, tmp_path / "r.pt", config=reg_config(steps=4), resume=True))
    moved = np.array(atlas.affine)
    moved[:3, 3] += 7.0
    shifted = (Volume(atlas.array, moved), Volume(labels.array, moved, "labels"))
    with pytest.raises(InputError, match="another atlas"):
        list(registration_engine(*shifted, targets, tmp_path / "r.pt", config=reg_config(steps=4), resume=True))
    assert load_checkpoint(tmp_path / "r.pt")["step"] == 2


def test_ctrl_c_says_where_the_checkpoint_is_and_exits_130(tmp_path, capsys, monkeypatch):
    out = tmp_path / "r.pt"

    def interrupted(args):
        save_checkpoint({"kind": "registration"}, out)  # what the engine does on the way out
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_train_registration", interrupted)
    assert cli.main(["train-registration", "task", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and str(out) in err and "--resume" in err and "Traceback" not in err


@pytest.mark.parametrize("sform, dtype, match", [(np.zeros((4, 4)), np.float32, "singular"),
                                                  (np.eye(4), np.complex64, "complex64 voxels")])
def test_degenerate_volumes_are_refused(tmp_path, capsys, sform, dtype, match):
    img = nib.Nifti1Image(np.ones((6, 6, 6), dtype), np.eye(4))
    img.set_qform(None, code=0)
    img.set_sform(sform, code=2)
    path = tmp_path / "v.nii.gz"
    nib.save(img, str(path))
    assert cli.main(["info", str(path)]) == 2
    assert match in capsys.readouterr().err
