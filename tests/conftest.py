"""Shared fixtures: tiny generated volumes written as real files."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest


def oblique_affine(spacing=(1.2, 0.9, 2.0), degrees=20.0, origin=(-40.5, 12.25, 7.0)) -> np.ndarray:
    """An LIA-like, rotated (oblique) voxel-to-world affine whose entries are exact float32 values."""
    t = np.deg2rad(degrees)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    lia = np.array([[-1, 0, 0], [0, 0, 1], [0, -1, 0]])  # axes: Left, Inferior, Anterior
    affine = np.eye(4)
    affine[:3, :3] = rot @ lia @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine.astype(np.float32).astype(np.float64)


def blobs(shape=(16, 20, 24), seed=0) -> np.ndarray:
    """A label map with three box-shaped structures (values 1, 2, 5) of different sizes."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=np.uint8)
    for value, size in ((1, 6), (2, 4), (5, 3)):
        start = [int(rng.integers(1, s - size - 1)) for s in shape]
        labels[tuple(slice(a, a + size) for a in start)] = value
    return labels


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray, intent: str | None = None) -> Path:
    img = nib.Nifti1Image(array, affine)
    if intent:
        img.header.set_intent(intent)
    nib.save(img, str(path))
    return path


@pytest.fixture
def image_and_labels(tmp_path):
    """(image path, labels path) of a tiny oblique scan and its label map."""
    labels = blobs()
    image = (labels * 40 + np.random.default_rng(1).normal(100, 5, labels.shape)).astype(np.float32)
    affine = oblique_affine()
    return (
        write_nifti(tmp_path / "scan.nii.gz", image, affine),
        write_nifti(tmp_path / "scan_labels.nii.gz", labels, affine),
    )
