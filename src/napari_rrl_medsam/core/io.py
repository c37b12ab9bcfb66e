"""Reading and writing volumes without losing geometry: NIfTI (nibabel) and TIFF (tifffile).

Every problem with a file becomes an `InputError` that names the file, the problem and the fix.
Writes are atomic (temporary file + rename) and refuse to replace an existing file unless asked.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import InputError
from .files import atomic_write, check_output, check_output_folder
from .volume import Grid, Kind, Volume, volume_id

NIFTI_SUFFIXES = (".nii.gz", ".nii")
TIFF_SUFFIXES = (".tif", ".tiff")
SUFFIXES = NIFTI_SUFFIXES + TIFF_SUFFIXES
# File-name words that mark a label map when the file itself does not say so.
LABEL_HINTS = ("label", "seg", "mask", "aseg", "annot", "parc")
# Length units of TIFF metadata, in mm (our world unit).
_UNIT_MM = {
    "mm": 1.0,
    "millimeter": 1.0,
    "cm": 10.0,
    "m": 1000.0,
    "micron": 1e-3,
    "um": 1e-3,
    "µm": 1e-3,
    "\\u00B5m": 1e-3,
    "nm": 1e-6,
    "pixel": 1.0,
    "": 1.0,
}


def is_volume_path(path: str | Path) -> bool:
    """Whether `path` names a volume file this product reads (NIfTI or TIFF, by its suffix).

    Args:
        path: a file name or path.
    """
    return str(path).lower().endswith(SUFFIXES)


def volume_files(folder: str | Path) -> list[Path]:
    """The volume files in `folder`, sorted; hidden files (macOS `._*` AppleDouble, our `.tmp`) are not volumes.

    Args:
        folder: the folder to list.
    """
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and is_volume_path(p) and not p.name.startswith("."))


def plan_outputs(
    inputs: Sequence[str | Path], folder: str | Path, endings: Sequence[str], overwrite: bool = False
) -> list[list[Path]]:
    """Each input's output files `<folder>/<input id><ending>`, checked before any work is done.

    Refuses two inputs that would write the same outputs (`scan.nii` and `scan.nii.gz`), an output that is one
    of the inputs, existing outputs without `overwrite`, and a folder that cannot be written.

    Args:
        inputs: the input volume files.
        folder: the output folder.
        endings: one per output of an input, e.g. ("_labels.nii.gz",).
        overwrite: whether existing outputs may be replaced.
    """
    folder = check_output_folder(folder)
    sources = {Path(p).resolve(): Path(p) for p in inputs}
    owner: dict[Path, Path] = {}
    plan = []
    for path in map(Path, inputs):
        outputs = [folder / f"{volume_id(path)}{ending}" for ending in endings]
        for out in outputs:
            if out in owner:
                raise InputError(
                    f"{owner[out]} and {path} would both be written to {out.name}; rename one of "
                    "them or give them separate runs / --out folders."
                )
            if out.resolve() in sources:
                raise InputError(
                    f"the output {out} would replace the input {sources[out.resolve()]}; choose another --out folder."
                )
            owner[out] = path
            check_output(out, overwrite)
        plan.append(outputs)
    return plan


def _check_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file. Check the path (relative paths start at {Path.cwd()}).")
    if path.is_dir():
        raise InputError(f"{path} is a folder; give the path of a volume file ({', '.join(SUFFIXES)}).")
    if not is_volume_path(path):
        raise InputError(
            f"{path}: unsupported file type; napari-rrl-medsam reads {', '.join(SUFFIXES)}. "
            "Convert the volume to NIfTI first (e.g. with dcm2niix for DICOM)."
        )
    if not os.access(path, os.R_OK):
        raise InputError(f"cannot read {path}: permission denied. Give yourself read access (chmod u+r) or copy it.")
    return path


def _check_complete(tif, path: Path) -> None:
    """Refuse a TIFF that holds fewer images than its own metadata declares (a truncated copy)."""
    declared = int((tif.imagej_metadata or {}).get("images", 0) or 0)
    shaped = tif.shaped_metadata[0].get("shape") if tif.shaped_metadata else None
    if shaped:
        declared = max(declared, int(np.prod(shaped[:-2])) if len(shaped) > 2 else 1)
    held = int(np.prod(tif.series[0].shape[:-2])) if len(tif.series[0].shape) > 2 else 1
    if declared > held:
        raise InputError(
            f"{path} is truncated: its metadata declares {declared} images, the file holds {held}. "
            "Re-export or re-copy it."
        )


def _check_size(shape: tuple[int, ...], dtype, path: Path) -> None:
    """Refuse a header that declares more voxels than this machine could hold (corrupt or not a volume)."""
    need = float(np.prod([float(s) for s in shape])) * np.dtype(dtype).itemsize
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX: no figure to compare with
        return
    if need > total:
        raise InputError(
            f"{path} declares a volume of shape {tuple(shape)} ({need / 2**30:.0f} GiB), more than this "
            f"machine's {total / 2**30:.0f} GiB of memory: its header is corrupt or the volume needs a "
            "bigger machine (or cropping first)."
        )


def guess_kind(path: Path, dtype: np.dtype, nifti_intent: str | None = None) -> Kind:
    """Label map or image: the NIfTI intent says so when set; else an integer file named like a label map or
    in a folder named like one (a task's `labels/`, nnU-Net's `labelsTr/`)."""
    if nifti_intent == "label":
        return "labels"
    name = path.name.lower()
    if np.issubdtype(dtype, np.integer) and (
        any(h in name for h in LABEL_HINTS) or path.parent.name.lower().startswith("label")
    ):  # a task's labels/
        return "labels"
    return "image"


def _as_3d(array_shape: tuple[int, ...], path: Path) -> tuple[int, ...]:
    """The 3D shape of a file's data, or an error for 2D and 4D data (trailing size-1 axes are dropped)."""
    shape = tuple(array_shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) < 3 or 1 in shape[:3]:
        raise InputError(
            f"{path} holds 2D data (shape {tuple(array_shape)}); a 3D volume is needed. "
            "Stack the slices into one 3D file."
        )
    if len(shape) > 3:
        raise InputError(
            f"{path} holds {len(shape)}D data (shape {tuple(array_shape)}), e.g. a time series or "
            "several channels; a single 3D volume is needed. Extract one "
            "(e.g. nibabel: img.slicer[..., 0], or fslroi)."
        )
    return shape


def _nifti(path: Path):
    import nibabel as nib

    try:
        return nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for bad headers
        raise InputError(
            f"cannot read {path} as NIfTI ({type(exc).__name__}: {exc}). The file is not a NIfTI "
            "image or is truncated/corrupt; re-export or re-copy it."
        ) from exc


def read_grid(path: str | Path) -> Grid:
    """Shape and affine from the header alone (cheap), with the same dimension checks as `load_volume`."""
    path = _check_path(path)
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        img = _nifti(path)
        return Grid(_as_3d(img.shape, path), img.affine)
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            shape = _as_3d(tif.series[0].shape, path)
            spacing = _tiff_spacing(tif)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(
            f"cannot read {path} as TIFF ({type(exc).__name__}: {exc}); the file is truncated or corrupt."
        ) from exc
    return Grid(shape, np.diag([*spacing, 1.0]))


def load_volume(path: str | Path, kind: Kind | None = None) -> Volume:
    """Read a 3D NIfTI or TIFF volume with its affine; `kind` None guesses image vs label map.

    Args:
        path: a NIfTI (.nii, .nii.gz) or TIFF (.tif, .tiff) file.
        kind: "image" or "labels"; None: labels when the NIfTI intent says so, or an integer file named like a
            label map or in a folder named like one (a task's `labels/`), else image.
    """
    path = _check_path(path)
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        img = _nifti(path)
        shape = _as_3d(img.shape, path)
        _check_size(shape, img.get_data_dtype(), path)
        array = _read_data(lambda: np.asarray(img.dataobj), path).reshape(shape)
        intent = img.header.get_intent()[0]
        affine, metadata = img.affine, {"nifti_header": img.header}
    else:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                _check_complete(tif, path)
                shape = _as_3d(tif.series[0].shape, path)
                _check_size(shape, tif.series[0].dtype, path)
                spacing = _tiff_spacing(tif)
                array = _read_data(lambda: tif.series[0].asarray(), path).reshape(shape)
        except InputError:
            raise
        except Exception as exc:
            raise InputError(
                f"cannot read {path} as TIFF ({type(exc).__name__}: {exc}); the file is truncated or corrupt."
            ) from exc
        intent, affine, metadata = None, np.diag([*spacing, 1.0]), {}
    if isinstance(array, np.memmap):
        array = np.array(array)
    _check_content(path, array, np.asarray(affine, np.float64))
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InputError(
                f"{path} has {bad} NaN or infinite voxels; replace them first "
                "(e.g. numpy.nan_to_num) and save the volume again."
            )
    return Volume(array, affine, kind or guess_kind(path, array.dtype, intent), path, metadata)


def _check_content(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Refuse what no step can use: an empty axis, non-real voxels, an affine that maps voxels to no volume."""
    if 0 in array.shape:
        raise InputError(f"{path} has an empty axis (shape {array.shape}); it holds no voxels.")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating) or array.dtype == bool):
        raise InputError(f"{path} holds {array.dtype} voxels; save it with real (integer or float) values.")
    linear = affine[:3, :3]
    sizes = np.linalg.svd(linear, compute_uv=False) if np.all(np.isfinite(affine)) else np.zeros(3)
    if sizes.min() <= 1e-6 * sizes.max() or sizes.max() == 0:  # relative: microscopy voxels are 1e-4 mm
        raise InputError(
            f"{path} has a singular or non-finite voxel-to-world affine (voxel sizes "
            f"{np.round(np.linalg.norm(linear, axis=0), 4).tolist()} mm); fix its header (e.g. "
            "set the sform / qform from the voxel size) and save it again."
        )


def _read_data(read, path: Path) -> np.ndarray:
    try:
        return read()
    except Exception as exc:
        raise InputError(
            f"cannot read the voxel data of {path} ({type(exc).__name__}: {exc}); the file is "
            "truncated or corrupt. Re-export or re-copy it."
        ) from exc


def _tiff_spacing(tif) -> tuple[float, float, float]:
    """Voxel size in mm for axes (Z, Y, X) from OME or ImageJ metadata; 1 where the file says nothing."""
    if tif.is_ome and tif.ome_metadata:
        try:
            root = ET.fromstring(tif.ome_metadata)
            pixels = next(el for el in root.iter() if el.tag.endswith("Pixels"))

            def size(axis: str) -> float:
                value = float(pixels.get(f"PhysicalSize{axis}", 1.0))
                return value * _UNIT_MM.get(pixels.get(f"PhysicalSize{axis}Unit", "µm"), 1e-3)

            if any(pixels.get(f"PhysicalSize{a}") for a in "XYZ"):
                return size("Z"), size("Y"), size("X")
        except (ET.ParseError, StopIteration, ValueError):
            pass
    page = tif.pages[0]
    ij = tif.imagej_metadata or {}
    unit = _UNIT_MM.get(str(ij.get("unit", "")).lower(), 1.0)

    def per_pixel(tag: str) -> float:
        if tag not in page.tags:
            return 1.0
        num, den = page.tags[tag].value
        return (den / num if num else 1.0) * unit

    if not ij and "XResolution" not in page.tags:
        return 1.0, 1.0, 1.0
    return float(ij.get("spacing", 1.0)) * unit, per_pixel("YResolution"), per_pixel("XResolution")


def label_dtype(array: np.ndarray) -> np.dtype:
    """The smallest integer type that holds a label map's values (NIfTI viewers dislike int64)."""
    lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
    for dtype in (np.uint8, np.uint16, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dtype)
    raise InputError(f"label values {lo}..{hi} do not fit a 32-bit integer")


def save_volume(volume: Volume, path: str | Path, overwrite: bool = False) -> Path:
    """Write a volume to NIfTI (or TIFF) with its affine; atomic; refuses to overwrite unless asked.

    Args:
        volume: the volume (its affine goes into the file).
        path: the file; its suffix chooses NIfTI or TIFF; its folder is created.
        overwrite: replace an existing file.
    """
    path = Path(path)
    if not is_volume_path(path):
        raise InputError(f"{path}: choose a file name ending in .nii.gz, .nii, .tif or .tiff")
    check_output(path, overwrite, "volume")
    array = np.asarray(volume.array)
    if volume.kind == "labels":
        if not np.issubdtype(array.dtype, np.integer):
            array = np.rint(array)
        array = array.astype(label_dtype(array), copy=False)
    elif array.dtype == np.float64:
        array = array.astype(np.float32)
    elif array.dtype == bool:
        array = array.astype(np.uint8)
    suffix = next(s for s in SUFFIXES if path.name.lower().endswith(s))
    writer = _write_nifti if suffix in NIFTI_SUFFIXES else _write_tiff
    return atomic_write(path, lambda tmp: writer(volume, array, tmp), suffix)


def _write_nifti(volume: Volume, array: np.ndarray, tmp: str) -> None:
    import nibabel as nib

    source = volume.metadata.get("nifti_header")
    header = source.copy() if source is not None else nib.Nifti1Header()
    img = nib.Nifti1Image(array, volume.affine, header=header)
    img.header.set_data_dtype(array.dtype)
    img.header.set_slope_inter(1.0, 0.0)
    img.header.set_intent("label" if volume.kind == "labels" else "none")
    # sform holds the exact affine (float32); qform repeats it as a rotation for viewers that use it.
    sform_code = int(header["sform_code"]) if source is not None and int(header["sform_code"]) > 0 else 2
    qform_code = int(header["qform_code"]) if source is not None and int(header["qform_code"]) > 0 else sform_code
    img.set_sform(volume.affine, code=sform_code)
    img.set_qform(volume.affine, code=qform_code)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, tmp)


def _write_tiff(volume: Volume, array: np.ndarray, tmp: str) -> None:
    import tifffile

    linear = volume.affine[:3, :3]
    if not np.allclose(linear, np.diag(np.diag(linear))) or np.any(np.diag(linear) <= 0):
        raise InputError("TIFF cannot store a rotated or flipped orientation; save this volume as .nii.gz.")
    sz, sy, sx = np.diag(linear)
    if array.dtype not in (np.uint8, np.uint16, np.float32):
        array = array.astype(
            np.uint16
            if np.issubdtype(array.dtype, np.integer) and array.min() >= 0 and array.max() < 65536
            else np.float32
        )
    tifffile.imwrite(
        tmp,
        array,
        imagej=True,
        resolution=(1 / sx, 1 / sy),
        metadata={"spacing": float(sz), "unit": "mm", "axes": "ZYX"},
    )
