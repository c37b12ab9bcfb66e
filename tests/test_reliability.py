"""Bad input ends in a clear error before any work, and nothing is lost (issue 15). Tiny data throughout."""

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import blobs, write_nifti
from test_registration import config as reg_config
from test_registration import phantom

from napari_rrl_medsam import cli
from napari_rrl_medsam.api import InputError, Volume, volume_files
from napari_rrl_medsam.core.checkpoint import load_checkpoint, save_checkpoint
from napari_rrl_medsam.core.engines.cotrain import CotrainConfig
from napari_rrl_medsam.core.engines.register import RegistrationTrainConfig, registration_engine


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
    assert code == 2 and "scan.nii" in err and "scan_labels.nii.gz" in err
    assert [p.name for p in volume_files(folder)] == ["scan.nii", "scan.nii.gz"]
    assert not (tmp_path / "o").exists()


def test_register_checks_every_output_before_any_work(tmp_path, capsys):
    target = write_nifti(tmp_path / "t.nii.gz", np.zeros((8, 8, 8), np.float32), np.eye(4))
    out = tmp_path / "out"
    out.mkdir()
    (out / "t_jacobian.nii.gz").write_bytes(b"mine")
    args = [
        "register",
        str(target),
        "--model",
        str(tmp_path / "none.pt"),
        "--atlas-image",
        str(target),
        "--atlas-labels",
        str(target),
        "--out",
        str(out),
    ]
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
    for bad, match in (
        ({"steps": 0}, "steps must be at least 1"),
        ({"steps": -3}, "at least 1"),
        ({"steps": "10"}, "steps must be an int"),
        ({"atlas_probability": 1.5}, "between 0 and 1"),
        ({"lr": float("nan")}, "finite"),
        ({"use_prompt": "no"}, "must be a bool"),
        ({"image_size": 127}, "image_size must be even"),
    ):
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


@pytest.mark.parametrize(
    "sform, dtype, match", [(np.zeros((4, 4)), np.float32, "singular"), (np.eye(4), np.complex64, "complex64 voxels")]
)
def test_degenerate_volumes_are_refused(tmp_path, capsys, sform, dtype, match):
    img = nib.Nifti1Image(np.ones((6, 6, 6), dtype), np.eye(4))
    img.set_qform(None, code=0)
    img.set_sform(sform, code=2)
    path = tmp_path / "v.nii.gz"
    nib.save(img, str(path))
    assert cli.main(["info", str(path)]) == 2
    assert match in capsys.readouterr().err


def _task_folder(root, label_name="atlas.nii.gz"):
    """A tiny task folder: images/atlas, images/u1 and the atlas's labels under `label_name`."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    labels = blobs()
    for name in ("atlas", "u1"):
        write_nifti(root / "images" / f"{name}.nii.gz", (labels * 30.0 + 10).astype(np.float32), np.eye(4))
    write_nifti(root / "labels" / label_name, labels, np.eye(4))
    return root


def test_malformed_tasks_end_in_messages(tmp_path):
    from napari_rrl_medsam.api import load_task

    root = _task_folder(tmp_path / "t")
    for text, match in (
        ("[1, 2]", "JSON list, not an object"),
        (
            '{"splits": {"oneshot": {"atlas": "atlas", "train_unlabelled": ["u1"]}}, "label_names": {"one": "x"}}',
            "'label_names' must map label values",
        ),
        ('{"splits": {"oneshot": {"atlas": 3, "train_unlabelled": ["u1"]}}}', "a volume id"),
        ('{"splits": {"oneshot": {"atlas": "atlas", "train_unlabelled": ["atlas", "u1"]}}}', "listed more than once"),
    ):
        (root / "dataset.json").write_text(text)
        with pytest.raises(InputError, match=match):
            load_task(root / "dataset.json")
    with pytest.raises(InputError, match="not a dataset.json"):
        load_task(root / "images" / "atlas.nii.gz")  # a volume where a task is asked for
    (root / "dataset.json").write_text(
        '{"splits": {"oneshot": {"atlas": "atlas", "train_unlabelled": ["u1"]}}, "eval_labels": [1, 9]}'
    )
    with pytest.raises(InputError, match=r"eval_labels \[9\] are not in the atlas labels"):
        load_task(root / "dataset.json")


def test_a_folder_whose_labels_are_named_differently_says_which_names_it_expects(tmp_path):
    from napari_rrl_medsam.api import load_task

    root = _task_folder(tmp_path / "t", label_name="atlas_seg.nii.gz")
    with pytest.raises(InputError, match=r"labels/atlas.nii.gz for images/atlas.nii.gz\); found atlas_seg.nii.gz"):
        load_task(root)


def test_huge_label_values_are_refused(tmp_path):
    from napari_rrl_medsam.api import load_task

    root = _task_folder(tmp_path / "t")
    img = nib.Nifti1Image(blobs().astype(np.int64) * 2**40, np.eye(4), dtype=np.int64)
    nib.save(img, str(root / "labels" / "atlas.nii.gz"))
    with pytest.raises(InputError, match="label value 5497558138880; values up to 1000000"):
        load_task(root)


def test_checkpoints_missing_entries_or_with_wrong_shapes_are_refused(tmp_path):
    from napari_rrl_medsam.api import load_model

    atlas, labels = phantom()
    list(registration_engine(atlas, labels, [phantom(shift=1.0)[0]], tmp_path / "r.pt", config=reg_config(steps=1)))
    state = load_checkpoint(tmp_path / "r.pt")
    del state["grid"]
    torch.save(state, tmp_path / "missing.pt")
    with pytest.raises(InputError, match="lacks the entry 'grid'"):
        load_model(tmp_path / "missing.pt")
    state = load_checkpoint(tmp_path / "r.pt")
    name = next(iter(state["network"]))
    state["network"][name] = torch.zeros(1, 2, 3)
    torch.save(state, tmp_path / "shapes.pt")
    with pytest.raises(InputError, match="does not fit the model"):
        load_model(tmp_path / "shapes.pt")


def test_no_signal_or_no_overlap_with_the_atlas_is_refused(tmp_path):
    from napari_rrl_medsam import api

    atlas, labels = phantom()
    list(registration_engine(atlas, labels, [phantom(shift=1.0)[0]], tmp_path / "r.pt", config=reg_config(steps=1)))
    model = api.load_model(tmp_path / "r.pt", device="cpu")
    with pytest.raises(InputError, match="no signal"):
        api.register(model, (atlas, labels), Volume(np.zeros(atlas.shape, np.float32), atlas.affine))
    far = np.array(atlas.affine)
    far[:3, 3] += 500.0
    with pytest.raises(InputError, match=r"covers 0% of the atlas's field of view"):
        api.register(model, (atlas, labels), Volume(atlas.array, far))
    half = np.array(atlas.affine)
    half[0, 3] += atlas.shape[0] * atlas.spacing[0] / 2
    with pytest.warns(UserWarning, match="covers 50%"):
        api.register(model, (atlas, labels), Volume(atlas.array, half), refine_steps=0)


def test_half_resolution_fields_scale_exactly_on_odd_axes():
    from napari_rrl_medsam.core.models.registration import displacement

    # one half-resolution voxel along each axis, on a 73 x 8 x 9 grid (half resolution 37 x 4 x 5)
    flow = torch.ones(1, 3, 37, 4, 5)
    full = displacement(flow, (73, 8, 9), None)
    # a half-resolution voxel spans size / half-size full voxels (align_corners=False geometry of the upsampling)
    assert full[0, :, 10, 3, 4].tolist() == pytest.approx([73 / 37, 2.0, 9 / 5])


def test_a_temporary_file_left_by_a_killed_save_is_cleaned_up(tmp_path):
    import os
    import time

    left = tmp_path / ".r.pt.abc123.tmp"  # what atomic_write leaves when killed mid-save
    left.write_bytes(b"half")
    recent = tmp_path / ".r.pt.def456.tmp"  # maybe another process's save in progress: kept
    recent.write_bytes(b"half")
    os.utime(left, (time.time() - 3600, time.time() - 3600))
    save_checkpoint({"kind": "registration"}, tmp_path / "r.pt")
    assert not left.exists() and recent.exists()


def test_a_header_declaring_an_impossible_volume_is_refused_before_reading(tmp_path, capsys):
    path = write_nifti(tmp_path / "huge.nii", np.zeros((4, 4, 4), np.float32), np.eye(4))
    raw = bytearray(path.read_bytes())
    raw[42:48] = np.array([30000, 30000, 30000], "<i2").tobytes()  # dim[1:4] in the NIfTI-1 header
    path.write_bytes(bytes(raw))
    assert cli.main(["info", str(path)]) == 2
    assert "declares a volume of shape (30000, 30000, 30000)" in capsys.readouterr().err


def test_an_unreadable_file_says_permission_denied(tmp_path, capsys, monkeypatch):
    import os

    path = write_nifti(tmp_path / "v.nii.gz", np.ones((6, 6, 6), np.float32), np.eye(4))
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)  # as a non-owner sees it (tests may run as root)
    assert cli.main(["info", str(path)]) == 2
    assert "permission denied" in capsys.readouterr().err


def test_a_truncated_tiff_is_called_truncated_not_2d(tmp_path, capsys):
    import tifffile

    tifffile.imwrite(
        tmp_path / "full.tif", np.random.default_rng(0).random((20, 16, 16)).astype(np.float32), imagej=True
    )
    data = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])  # an interrupted copy
    assert cli.main(["info", str(tmp_path / "cut.tif")]) == 2
    assert "is truncated: its metadata declares 20 images" in capsys.readouterr().err


def test_a_failed_save_keeps_the_result_in_the_temporary_folder_and_says_where(tmp_path, monkeypatch):
    import errno
    import os
    import tempfile

    from napari_rrl_medsam.api import load_volume, save_volume
    from napari_rrl_medsam.core import files

    full = tmp_path / "full_disk"
    spare_dir = tmp_path / "spare"
    spare_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spare_dir))
    replace = os.replace

    def no_space(src, dst):  # the output's disk is full; the temporary folder's is not
        if os.path.dirname(dst) == str(full):
            raise OSError(errno.ENOSPC, "No space left on device")
        replace(src, dst)

    monkeypatch.setattr(files.os, "replace", no_space)
    labels = Volume(blobs(), np.eye(4), "labels")
    with pytest.raises(InputError, match="No space left on device.*saved to") as info:
        save_volume(labels, full / "scan_labels.nii.gz")
    rescued = next(spare_dir.glob("scan_labels-rescued-*.nii.gz"))
    assert str(rescued) in str(info.value) and np.array_equal(load_volume(rescued).array, labels.array)
    with pytest.raises(InputError, match="checkpoint was saved|saved to"):
        save_checkpoint({"kind": "registration", "w": torch.ones(2)}, full / "r.pt")
    assert torch.equal(load_checkpoint(next(spare_dir.glob("r-rescued-*.pt")))["w"], torch.ones(2))


def test_sigterm_stops_a_run_as_ctrl_c_does(tmp_path, capsys, monkeypatch):
    import os
    import signal
    import time

    out = tmp_path / "r.pt"

    def terminated(args):
        save_checkpoint({"kind": "registration"}, out)
        os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's stop (SLURM sends SIGTERM first)
        time.sleep(10)  # never reached in full: the handler interrupts it

    monkeypatch.setattr(cli, "cmd_train_registration", terminated)
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["train-registration", "task", "--out", str(out)]) == 130
    assert "--resume" in capsys.readouterr().err and signal.getsignal(signal.SIGTERM) == before
