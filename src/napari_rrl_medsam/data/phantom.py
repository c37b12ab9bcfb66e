"""Deterministic synthetic T1 brain phantom used as offline sample data.

Real scans cannot be shipped, so one-shot segmentation is demonstrated on a
procedural brain: a left/right symmetric template of smooth implicit shapes
(MNI-like millimetre coordinates) that every subject samples through its own
smooth random deformation.  Seed 0 is the undeformed atlas with the template's
anatomy; every other seed is a subject with its own anatomy (`Anatomy`: gyral
pattern, sulcal depth, cortical thickness, ventricle and nuclei sizes, drawn as
real subjects differ), which no smooth deformation of the atlas matches exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

LABELS: dict[int, str] = {
    2: "Left-Cerebral-White-Matter",
    3: "Left-Cerebral-Cortex",
    4: "Left-Lateral-Ventricle",
    8: "Left-Cerebellum-Cortex",
    10: "Left-Thalamus",
    11: "Left-Caudate",
    12: "Left-Putamen",
    16: "Brain-Stem",
    17: "Left-Hippocampus",
    41: "Right-Cerebral-White-Matter",
    42: "Right-Cerebral-Cortex",
    43: "Right-Lateral-Ventricle",
    47: "Right-Cerebellum-Cortex",
    49: "Right-Thalamus",
    50: "Right-Caudate",
    51: "Right-Putamen",
    53: "Right-Hippocampus",
}
_RIGHT = {2: 41, 3: 42, 4: 43, 8: 47, 10: 49, 11: 50, 12: 51, 17: 53}

# Mean T1 grey level per label (0 = CSF inside the brain mask).
_T1 = {0: 40.0, 2: 200.0, 3: 130.0, 4: 40.0, 8: 135.0, 10: 162.0, 11: 150.0, 12: 155.0, 16: 185.0, 17: 128.0}

_SCALE = 0.90  # template mm -> physical mm (adult size in FOV)
_CENTRE = np.array([0.0, -18.0, 5.0])  # template point mapped to the grid centre
_FOLD_SEED = 20240607  # fixed: the gyral pattern is part of the template


@dataclass(frozen=True)
class Anatomy:
    """One subject's anatomy relative to the template (the defaults are the atlas's).

    fold_phases: radians added to the phases of the 16 sulcal waves: sulci move by a few millimetres and
    bend differently, as gyral patterns differ between subjects.
    The other fields scale a size: sulcal depth, cortical thickness (mm), the lateral ventricles (left,
    right), deep grey nuclei (thalamus, caudate, putamen), hippocampus and cerebellum.
    """

    fold_phases: tuple[float, ...] = ()
    sulcal_depth: float = 1.0
    cortex_mm: float = 3.2
    ventricles: tuple[float, float] = (1.0, 1.0)
    nuclei: tuple[float, float, float] = (1.0, 1.0, 1.0)
    hippocampus: float = 1.0
    cerebellum: float = 1.0


def subject_anatomy(seed: int) -> Anatomy:
    """The anatomy of subject `seed` (seed 0: the template's). Ranges are those of healthy adults of
    different ages: ventricles from 0.85x to 1.5x, cortex 2.6-3.8 mm, nuclei and hippocampus +-12%."""
    if seed == 0:
        return Anatomy()
    rng = np.random.default_rng([seed, 7])  # its own stream: the deformation and contrast draws stay as they were
    phases = rng.normal(0.0, 1.0, 16)
    depth, cortex, ventricle = rng.uniform(0.85, 1.15), rng.uniform(2.6, 3.8), rng.uniform(0.85, 1.5)
    sides, nuclei = ventricle * rng.uniform(0.92, 1.08, 2), rng.uniform(0.88, 1.12, 3)
    hippocampus, cerebellum = rng.uniform(0.88, 1.12), rng.uniform(0.92, 1.08)
    return Anatomy(
        tuple(map(float, phases)),
        float(depth),
        float(cortex),
        tuple(map(float, sides)),
        tuple(map(float, nuclei)),
        float(hippocampus),
        float(cerebellum),
    )


def _fold_waves() -> list[tuple[np.ndarray, np.ndarray]]:
    """Random plane waves (the template's): sulcal sheets, their depth and their bending."""
    rng = np.random.default_rng(_FOLD_SEED)

    def waves(n: int, lam_lo: float, lam_hi: float) -> tuple[np.ndarray, np.ndarray]:
        k = rng.normal(size=(n, 3))
        k *= (2 * np.pi / rng.uniform(lam_lo, lam_hi, n) / np.linalg.norm(k, axis=1))[:, None]
        return k.astype(np.float32), rng.uniform(0, 2 * np.pi, n).astype(np.float32)

    return [waves(16, 22.0, 34.0), waves(6, 50.0, 80.0)] + [waves(4, 30.0, 60.0) for _ in range(3)]


def _wave_sum(p: list[np.ndarray], k: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Sum of cosine plane waves at points p, scaled to roughly unit variance."""
    return sum(
        np.cos(k[i, 0] * p[0] + k[i, 1] * p[1] + k[i, 2] * p[2] + phase[i]) for i in range(len(phase))
    ) / np.float32(np.sqrt(len(phase) / 2.0))


def _ellipsoid(q: list[np.ndarray], centre: Sequence[float], axes: Sequence[float], yaw_deg: float = 0.0) -> np.ndarray:
    """Squared normalised radius of a (z-rotated) ellipsoid; < 1 means inside."""
    c, s = np.cos(np.radians(yaw_deg)), np.sin(np.radians(yaw_deg))
    dx, dy, dz = q[0] - centre[0], q[1] - centre[1], q[2] - centre[2]
    u, v = c * dx + s * dy, -s * dx + c * dy
    return (u / axes[0]) ** 2 + (v / axes[1]) ** 2 + (dz / axes[2]) ** 2


def _tube(q: list[np.ndarray], points: Sequence[Sequence[float]], radii: Sequence[float]) -> np.ndarray:
    """Distance to a polyline divided by its (linearly tapering) radius; < 1 inside."""
    pts, rad = np.asarray(points, np.float32), np.asarray(radii, np.float32)
    best = np.full(q[0].shape, np.inf, np.float32)
    for a, b, ra, rb in zip(pts[:-1], pts[1:], rad[:-1], rad[1:]):
        ab = b - a
        t = ((q[0] - a[0]) * ab[0] + (q[1] - a[1]) * ab[1] + (q[2] - a[2]) * ab[2]) / (ab @ ab)
        t = np.clip(t, 0.0, 1.0)
        d2 = sum((q[i] - a[i] - t * ab[i]) ** 2 for i in range(3))
        np.minimum(best, np.sqrt(d2) / (ra + t * (rb - ra)), out=best)
    return best


def _template(q: list[np.ndarray], anatomy: Anatomy = Anatomy()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label the template at template-mm points q with a subject's `anatomy`; also return the brain mask and
    cerebellar shading.

    One hemisphere is modelled and mirrored with |x|, so the shapes are symmetric about the (possibly
    deformed) midline except for the ventricles' sizes; later assignments win (fixed priority).
    """
    x, y, z = q
    h = [np.abs(x), y, z]  # mirrored coordinates
    right = x >= 0
    lab = np.zeros(x.shape, np.uint8)

    # Cerebrum hull = ellipsoid (flatter below) united with temporal lobes; depth in mm below it.
    def radial_depth(
        centre: Sequence[float], axes_lo: Sequence[float], axes_hi: Sequence[float]
    ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        d = [h[i] - centre[i] for i in range(3)]
        v = [d[i] / np.where(d[i] > 0, axes_hi[i], axes_lo[i]).astype(np.float32) for i in range(3)]
        rho = np.sqrt(v[0] ** 2 + v[1] ** 2 + v[2] ** 2) + 1e-6
        return np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2), rho, [70.0 * vi / rho for vi in v]

    r, rho, direction = radial_depth((0, -18, 14), (71, 86, 48), (71, 86, 62))
    (k, phase), depth_waves, *bend_waves = _fold_waves()
    if anatomy.fold_phases:
        phase = phase + np.asarray(anatomy.fold_phases, np.float32)
    sulcal_depth = anatomy.sulcal_depth * (15.0 + 5.0 * _wave_sum(direction, *depth_waves))
    direction = [direction[i] + 6.0 * _wave_sum(h, *bend_waves[i]) for i in range(3)]
    fold = _wave_sum(direction, k, phase)  # zero set = curved, mostly radial sheets
    sheet = np.abs(fold) / np.sqrt((k**2).sum(1).mean())  # ~ mm to the nearest sheet
    depth = r * (1.0 / (rho * (1.0 + 0.025 * np.exp(-fold * fold))) - 1.0)  # hull dips at sulci
    rt, rho_t, _ = radial_depth((46, -16, -14), (22, 40, 22), (22, 40, 22))
    depth = np.maximum(depth, rt * (1.0 / rho_t - 1.0))
    cerebrum = depth > 0
    # Interhemispheric fissure: full depth at the poles, down to the corpus callosum in between.
    zcc = 32.0 - 20.0 * ((y + 6.0) / 38.0) ** 2
    depth = np.where(z > zcc, np.minimum(depth, h[0] - 0.6), depth)
    # Cortex = within 3.2 mm of the pial surface (hull + sulcal sheets); thin CSF in the sulci.
    pial = np.minimum(depth, np.hypot(sheet, np.maximum(depth - sulcal_depth, 0.0)))
    csf = (depth < 0) | ((sheet < 0.6) & (depth < sulcal_depth))
    lab[cerebrum & ~csf] = 3
    lab[cerebrum & (pial > anatomy.cortex_mm)] = 2

    # Cerebellum (two hemispheres) and brainstem (tapering tube with a pontine bulge).
    cb = (
        np.minimum(_ellipsoid(h, (21, -60, -36), (27, 25, 18), -15.0), _ellipsoid(h, (4, -58, -30), (10, 22, 17)))
        / anatomy.cerebellum**2
    )
    lab[cb < 1] = 8
    bs = _tube(q, [(0, -20, 0), (0, -26, -22), (0, -30, -40), (0, -38, -80)], [9, 12, 9, 8])
    lab[bs < 1] = 16

    # Deep grey nuclei, hippocampus and the C-shaped lateral ventricle (highest priority last).
    thalamus, caudate, putamen = anatomy.nuclei
    ventricle = np.where(right, anatomy.ventricles[1], anatomy.ventricles[0]).astype(np.float32)
    lab[_ellipsoid(h, (25, 2, 2), (6.5, 15, 10), 10.0) < putamen**2] = 12
    lab[_tube(h, [(31, -8, -20), (30, -22, -14), (25, -36, -4)], [5.5, 4.5, 3.5]) < anatomy.hippocampus] = 17
    lab[_ellipsoid(h, (11, -18, 6), (8, 16, 9.5), -15.0) < thalamus**2] = 10
    lab[_tube(h, [(14, 16, 8), (15, 0, 16), (19, -16, 20), (25, -30, 16)], [8, 6, 4, 3]) < caudate] = 11
    lab[_ellipsoid(q, (0, -14, 4), (2.5, 14, 9)) < np.mean(anatomy.ventricles) ** 2] = 0  # third ventricle (CSF)
    lab[
        _tube(
            h,
            [(8, 24, 10), (8, 8, 17), (11, -14, 20), (20, -34, 16), (28, -40, 4), (33, -28, -10), (33, -12, -16)],
            [5.5, 6.0, 5.5, 6.5, 5.5, 3.5, 3.0],
        )
        < ventricle
    ] = 4

    brain = cerebrum | (cb < 1) | (bs < 1.2)
    lab[~brain] = 0
    for lft, rgt in _RIGHT.items():
        lab[(lab == lft) & right] = rgt
    # Cerebellar folia: concentric bright core / dark lamina modulation (intensity only).
    rc = np.sqrt(_ellipsoid(h, (21, -60, -36), (27, 25, 18), -15.0)) / anatomy.cerebellum
    folia = np.where(rc < 0.45, 55.0, -22.0 * (np.cos(2 * np.pi * rc * 22.0 / 5.0) > 0.6))
    return lab, brain, folia.astype(np.float32)


def _smooth_field(
    rng: np.random.Generator, shape: tuple[int, ...], spacing: float, ctrl_mm: float, n: int
) -> np.ndarray:
    """n smooth random fields (unit max-abs) from Gaussian RBFs on a coarse control grid.

    Tensor-product weights keep it separable, hence fast (no full-size spline zoom).
    """
    weights = []
    for size in shape:
        ext = size * spacing
        nc = max(int(np.ceil(ext / ctrl_mm)) + 1, 2)
        centres = np.linspace(0.0, ext, nc)
        pos = (np.arange(size) + 0.5) * spacing
        weights.append(np.exp(-0.5 * ((pos[:, None] - centres[None]) / ctrl_mm) ** 2))
    coarse = rng.standard_normal((n,) + tuple(w.shape[1] for w in weights))
    f = np.einsum("ia,nabc->nibc", weights[0], coarse)
    f = np.einsum("jb,nibc->nijc", weights[1], f)
    f = np.einsum("kc,nijc->nijk", weights[2], f)
    return (f / (np.abs(f).max() + 1e-12)).astype(np.float32)


def make_subject(
    seed: int, shape: tuple[int, int, int] = (96, 112, 96), spacing: float = 1.5, deform_mm: float = 4.0
) -> tuple[np.ndarray, np.ndarray]:
    """Return (image uint8 [0..255], labels uint8) on a RAS-ordered grid (axis0 = left->right,
    axis1 = posterior->anterior, axis2 = inferior->superior), voxel spacing `spacing` mm isotropic.

    Seed 0 is the atlas (the template's anatomy, no deformation); every other seed has its own anatomy
    (`subject_anatomy`) under its own deformation; every seed is bit-identical across calls.
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    grid = np.meshgrid(*[((np.arange(s) + 0.5) - s / 2.0).astype(np.float32) * spacing for s in shape], indexing="ij")
    p = np.stack(grid).reshape(3, -1)
    if seed != 0:  # pull grid points back into the atlas
        ang = np.radians(rng.uniform(-4.0, 4.0, 3))
        cx, cy, cz = np.cos(ang)
        sx, sy, sz = np.sin(ang)
        rot = (
            np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
            @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
            @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        )
        scale = rng.uniform(0.95, 1.05)
        shift = rng.uniform(-3.0, 3.0, 3)
        p = (rot.T @ (p - shift[:, None])).astype(np.float32) / np.float32(scale)
        disp = _smooth_field(rng, shape, spacing, 28.0, 3).reshape(3, -1)
        norm = np.sqrt((disp**2).sum(0)).max() + 1e-12
        p = p + disp * np.float32(deform_mm / norm)
    q = [(p[i] / _SCALE + _CENTRE[i]).astype(np.float32).reshape(shape) for i in range(3)]
    labels, brain, folia = _template(q, subject_anatomy(seed))

    # T1 contrast: per-tissue jitter, partial volume, bias field, Rician noise in the brain only.
    lut = np.zeros(256, np.float32)
    for (lab, val), gain in zip(_T1.items(), rng.uniform(0.95, 1.05, len(_T1))):
        lut[lab] = lut[_RIGHT.get(lab, lab)] = val * gain
    img = lut[labels]
    cbl = (labels == 8) | (labels == 47)
    img[cbl] += folia[cbl]
    img[~brain] = 0.0
    img = ndimage.gaussian_filter(img, 0.6)
    img *= 1.0 + 0.1 * _smooth_field(rng, shape, spacing, 60.0, 1)[0]
    sigma = np.float32(rng.uniform(4.0, 6.0))
    vals = img[brain]
    n1, n2 = rng.standard_normal((2, vals.size), dtype=np.float32) * sigma
    img[brain] = np.sqrt((vals + n1) ** 2 + n2**2)
    img[~brain] = 0.0
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), labels
