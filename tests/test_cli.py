import subprocess
import sys

import numpy as np
from conftest import blobs, write_nifti

from napari_rrl_medsam.cli import main


def test_demo_runs_the_pipeline_and_writes_nifti(tmp_path, capsys):
    quick = [
        "--registration-steps",
        "2",
        "--cotrain-steps",
        "2",
        "--slab",
        "4",
        "--image-size",
        "64",
        "--device",
        "cpu",
    ]
    assert main(["demo", "--out", str(tmp_path), *quick]) == 0
    out = capsys.readouterr().out
    assert "target02     96x96x112      1.50x1.50x1.50   LIA   72x84x72" in out
    table = out.split("Mean Dice")[1].splitlines()[2:5]
    assert [row.split()[0] for row in table] == ["target01", "target02", "target03"]
    for row in table:
        assert all(0.0 <= float(v) <= 1.0 for v in row.split()[1:5])
    from napari_rrl_medsam.api import load_volume
    from napari_rrl_medsam.data.sample import SAMPLE_DIR

    source = load_volume(SAMPLE_DIR / "images" / "target02.nii.gz")
    for name in ("pseudo_labels", "labels", "auto_prompt"):
        written = load_volume(tmp_path / f"target02_{name}.nii.gz")
        assert written.shape == source.shape and np.array_equal(written.affine, source.affine)
    assert main(["demo", "--out", str(tmp_path), *quick]) == 2  # will not overwrite without --overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_info_and_evaluate(tmp_path, capsys):
    path = write_nifti(tmp_path / "a_seg.nii.gz", blobs(), np.eye(4))
    assert main(["info", str(path)]) == 0
    assert "16x20x24" in capsys.readouterr().out
    csv = tmp_path / "scores.csv"
    assert main(["evaluate", str(path), str(path), "--csv", str(csv)]) == 0
    assert "1.000" in capsys.readouterr().out and csv.exists()


def test_errors_are_short_and_name_the_file(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert "missing.nii.gz: no such file" in err and "Traceback" not in err


def test_console_script_is_installed():
    result = subprocess.run(
        [sys.executable, "-m", "napari_rrl_medsam.cli", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("rrl-medsam ")


def test_import_is_light():
    """napari imports every plugin at start-up: the package and its api must not pull torch or napari."""
    code = (
        "import sys, time; t = time.perf_counter(); import napari_rrl_medsam, napari_rrl_medsam.api; "
        "dt = time.perf_counter() - t; "
        "heavy = [m for m in ('torch', 'napari', 'qtpy', 'PyQt6', 'monai') if m in sys.modules]; "
        "print(heavy, dt)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    heavy, seconds = out.rsplit(" ", 1)
    assert heavy == "[]", f"heavy modules imported: {heavy}"
    print(f"import napari_rrl_medsam + api: {float(seconds) * 1000:.0f} ms")
