import json

import numpy as np
import pytest
from conftest import blobs, oblique_affine, write_nifti

from napari_rrl_medsam.api import InputError, load_task


@pytest.fixture
def files(tmp_path):
    """A valid set of files: atlas image + labels, two unlabelled images, one evaluation pair."""
    affine = oblique_affine()
    out = {}
    for name, seed in (("atlas", 0), ("u1", 1), ("u2", 2), ("ev", 3)):
        labels = blobs(seed=seed)
        out[name] = write_nifti(tmp_path / f"{name}.nii.gz", (labels * 30.0 + 10).astype(np.float32), affine)
        out[name + "_lab"] = write_nifti(tmp_path / f"{name}_seg.nii.gz", labels, affine)
    return out


def explicit(files, **over):
    args = dict(
        atlas_image=files["atlas"],
        atlas_labels=files["atlas_lab"],
        unlabelled=[files["u1"], files["u2"]],
        evaluation=[(files["ev"], files["ev_lab"])],
    )
    args.update(over)
    return load_task(**args)


def test_explicit_paths(files):
    task = explicit(files)
    assert task.atlas.id == "atlas" and [c.id for c in task.unlabelled] == ["u1", "u2"]
    image, labels = task.atlas.load()
    assert labels.kind == "labels" and np.array_equal(labels.array, blobs(seed=0))
    assert "2 unlabelled, 1 evaluation" in task.summary()


def test_folder_layout(tmp_path, files):
    root = tmp_path / "study"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for name in ("atlas", "u1", "u2", "ev"):
        files[name].rename(root / "images" / f"{name}.nii.gz")
    files["atlas_lab"].rename(root / "labels" / "atlas.nii.gz")
    with pytest.raises(InputError, match="neither a dataset.json nor an images/ folder"):
        load_task(root / "images")  # the error names the expected layout
    task = load_task(root)
    assert task.atlas.id == "atlas" and len(task.unlabelled) == 3 and not task.evaluation
    files["ev_lab"].rename(root / "labels" / "ev.nii.gz")
    with pytest.raises(InputError, match="name the atlas with atlas=ID"):
        load_task(root)
    task = load_task(root, atlas="atlas")
    assert [c.id for c in task.evaluation] == ["ev"] and len(task.unlabelled) == 2


def test_dataset_json(tmp_path, files):
    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    for name in ("atlas", "u1", "u2", "ev"):
        files[name].rename(tmp_path / "images" / f"{name}.nii.gz")
        files[name + "_lab"].rename(tmp_path / "labels" / f"{name}.nii.gz")
    spec = {
        "eval_labels": [1, 2],
        "splits": {"oneshot": {"atlas": "atlas", "train_unlabelled": ["u1", "u2"], "validation": ["ev"]}},
    }
    (tmp_path / "dataset.json").write_text(json.dumps(spec))
    task = load_task(tmp_path / "dataset.json")
    assert task.eval_labels == [1, 2] and [c.id for c in task.evaluation] == ["ev"]
    # labels of unlabelled training volumes exist on disk but are never attached to the task
    assert all(c.labels is None for c in task.unlabelled)
    assert load_task(tmp_path).atlas.id == "atlas"
    with pytest.raises(InputError, match="no split 'other'"):
        load_task(tmp_path, split="other")


def test_neurite_oasis_layout(tmp_path, files):
    root = tmp_path / "neurite-oasis"
    for n, name in enumerate(("atlas", "u1", "u2", "ev"), start=1):
        subject = root / f"OASIS_OAS1_{n:04d}_MR1"
        subject.mkdir(parents=True)
        files[name].rename(subject / "aligned_norm.nii.gz")
        files[name + "_lab"].rename(subject / "aligned_seg35.nii.gz")
    task = load_task(root, n_validation=1)
    assert task.atlas.id == "OASIS_OAS1_0001_MR1" and task.atlas.labels.name == "aligned_seg35.nii.gz"
    assert [c.id for c in task.unlabelled] == ["OASIS_OAS1_0002_MR1", "OASIS_OAS1_0003_MR1"]
    assert all(c.labels is None for c in task.unlabelled)  # never read for training
    assert [c.id for c in task.evaluation] == ["OASIS_OAS1_0004_MR1"]
    assert np.array_equal(task.evaluation[0].load()[1].array, blobs(seed=3))
    assert load_task(root, atlas="OASIS_OAS1_0003_MR1", n_validation=0).atlas.id == "OASIS_OAS1_0003_MR1"
    few = load_task(root, n_validation=1, labelled=["OASIS_OAS1_0002_MR1"])  # a further labelled volume
    assert few.labelled[0].labels == root / "OASIS_OAS1_0002_MR1" / "aligned_seg35.nii.gz"
    assert [c.id for c in few.unlabelled] == ["OASIS_OAS1_0003_MR1"]
    with pytest.raises(InputError, match="lower n_validation"):
        load_task(root, n_validation=3)
    (root / "OASIS_OAS1_0002_MR1" / "aligned_seg35.nii.gz").unlink()
    with pytest.raises(InputError, match="lack aligned_seg35.nii.gz"):
        load_task(root)


def test_the_sample_is_a_valid_task():
    from napari_rrl_medsam.api import sample_task

    task = sample_task()
    assert task.atlas.id == "atlas" and len(task.unlabelled) == 2 and len(task.evaluation) == 1
    assert task.label_names and task.eval_labels


# --- bad input: every error names the problem -------------------------------------------------


def test_labels_shape_mismatch(tmp_path, files):
    bad = write_nifti(tmp_path / "small_seg.nii.gz", blobs((16, 20, 20)), oblique_affine())
    with pytest.raises(InputError, match=r"shape \(16, 20, 24\) but its labels have shape \(16, 20, 20\)"):
        explicit(files, atlas_labels=bad)


def test_labels_affine_mismatch(tmp_path, files):
    bad = write_nifti(tmp_path / "moved_seg.nii.gz", blobs(), oblique_affine(origin=(0.0, 0.0, 0.0)))
    with pytest.raises(InputError, match="different affines"):
        explicit(files, atlas_labels=bad)


def test_non_integer_labels(tmp_path, files):
    bad = write_nifti(tmp_path / "float_seg.nii.gz", blobs().astype(np.float32) + 0.5, oblique_affine())
    with pytest.raises(InputError, match="non-integer values"):
        explicit(files, atlas_labels=bad)
    ok = write_nifti(tmp_path / "float_ok_seg.nii.gz", blobs().astype(np.float32), oblique_affine())
    assert explicit(files, atlas_labels=ok).atlas.load()[1].array.dtype.kind == "i"


def test_empty_labels(tmp_path, files):
    bad = write_nifti(tmp_path / "empty_seg.nii.gz", np.zeros((16, 20, 24), np.uint8), oblique_affine())
    with pytest.raises(InputError, match="empty: every voxel is 0"):
        explicit(files, atlas_labels=bad)


def test_negative_labels(tmp_path, files):
    bad = write_nifti(tmp_path / "neg_seg.nii.gz", blobs().astype(np.int16) - 1, oblique_affine())
    with pytest.raises(InputError, match="negative values"):
        explicit(files, atlas_labels=bad)


@pytest.mark.parametrize("shape, match", [((16, 20), "2D data"), ((16, 20, 24, 2), "4D data")])
def test_wrong_dimensions(tmp_path, files, shape, match):
    bad = write_nifti(tmp_path / "bad.nii.gz", np.ones(shape, np.float32), np.eye(4))
    with pytest.raises(InputError, match=match):
        explicit(files, unlabelled=[bad])


def test_nan_volume(tmp_path, files):
    data = np.ones((16, 20, 24), np.float32)
    data[0, 0, :3] = np.nan
    bad = write_nifti(tmp_path / "nan.nii.gz", data, oblique_affine())
    with pytest.raises(InputError, match="3 NaN or infinite voxels"):
        explicit(files, unlabelled=[bad])
    assert explicit(files, unlabelled=[bad], check=False)  # headers alone cannot see NaNs


def test_truncated_and_unreadable_files(tmp_path, files):
    truncated = tmp_path / "cut.nii.gz"
    truncated.write_bytes(files["u1"].read_bytes()[:-200])
    with pytest.raises(InputError, match="truncated or corrupt"):
        explicit(files, unlabelled=[truncated])
    junk = tmp_path / "junk.nii"
    junk.write_bytes(b"\x00" * 10)
    with pytest.raises(InputError, match="cannot read .*junk.nii"):
        explicit(files, unlabelled=[junk])


def test_missing_files_and_incomplete_tasks(tmp_path, files):
    with pytest.raises(FileNotFoundError, match="gone.nii.gz: no such file"):
        explicit(files, unlabelled=[tmp_path / "gone.nii.gz"])
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_task(tmp_path / "nowhere")
    with pytest.raises(InputError, match="needs atlas_image and atlas_labels"):
        load_task(atlas_image=files["atlas"], unlabelled=[files["u1"]])
    with pytest.raises(InputError, match="no unlabelled volumes"):
        explicit(files, unlabelled=[])
