"""The bundled phantom: each subject has its own anatomy, not only the atlas's under a smooth warp."""

import numpy as np

from napari_rrl_medsam.data.phantom import _CENTRE, _SCALE, Anatomy, _template, make_subject, subject_anatomy


def _grid(spacing=3.0, shape=(48, 56, 48)):
    """Template-mm points of a coarse grid around the phantom's centre (as `make_subject` maps its grid)."""
    axes = [((np.arange(s) + 0.5) - s / 2.0).astype(np.float32) * spacing for s in shape]
    return [q / _SCALE + c for q, c in zip(np.meshgrid(*axes, indexing="ij"), _CENTRE)]


def test_the_atlas_has_the_template_anatomy_and_subjects_their_own():
    assert subject_anatomy(0) == Anatomy()
    drawn = [subject_anatomy(s) for s in (1, 2, 3)]
    assert len({a.cortex_mm for a in drawn}) == 3 and all(a.fold_phases for a in drawn)
    assert subject_anatomy(2) == subject_anatomy(2)  # deterministic


def test_anatomy_changes_structure_sizes_and_the_gyral_pattern():
    q = _grid()
    base, _, _ = _template(q)
    big, _, _ = _template(q, Anatomy(ventricles=(1.4, 1.0)))
    assert (big == 4).sum() > 1.5 * (base == 4).sum()  # left ventricle larger ...
    assert abs(int((big == 43).sum()) - int((base == 43).sum())) <= 0.02 * (base == 43).sum()  # ... right kept
    thick, _, _ = _template(q, Anatomy(cortex_mm=4.0))
    assert (thick == 3).sum() > (base == 3).sum() and (thick == 2).sum() < (base == 2).sum()
    folded, _, _ = _template(q, Anatomy(fold_phases=(1.0,) * 16))
    cortex = (base == 3) | (base == 42)
    moved = cortex != ((folded == 3) | (folded == 42))
    assert moved.sum() > 0.2 * cortex.sum()  # the sulci are elsewhere, not a global shift of the cortex
    assert (folded == 10).sum() == (base == 10).sum()  # deep structures untouched by the folds


def test_subjects_are_deterministic():
    a = make_subject(3, shape=(24, 28, 24), spacing=6.0)
    b = make_subject(3, shape=(24, 28, 24), spacing=6.0)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
