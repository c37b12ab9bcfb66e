"""Multi-atlas label fusion (issue 18, item 1): majority and locally weighted votes, and several atlases
registered onto one target."""

from __future__ import annotations

import numpy as np
import pytest
from test_registration import config, dice, phantom

from napari_rrl_medsam import api
from napari_rrl_medsam.core.engines.register import registration_engine
from napari_rrl_medsam.core.fusion import check_label_sets, fuse, local_weights
from napari_rrl_medsam.core.registration import RegistrationModel


def test_majority_vote_and_ties_going_to_the_first_atlas():
    a, b, c = (np.full((2, 2, 2), v, np.uint8) for v in (1, 2, 2))
    assert (fuse([a, b, c]) == 2).all()  # two votes against one
    assert (fuse([a, b]) == 1).all() and (fuse([b, a]) == 2).all()  # a tie: the first atlas's label
    assert np.array_equal(fuse([a]), a)


def test_the_local_vote_follows_the_atlas_that_looks_like_the_target_there():
    rng = np.random.default_rng(0)
    target = rng.random((20, 8, 8)).astype(np.float32)
    left, right = np.zeros(target.shape, bool), np.zeros(target.shape, bool)
    left[:10], right[10:] = True, True
    # atlas 1 resembles the target on the left only, atlas 2 on the right only; each labels its own half
    image1 = np.where(left, target, rng.random(target.shape)).astype(np.float32)
    image2 = np.where(right, target, rng.random(target.shape)).astype(np.float32)
    labels1, labels2 = np.full(target.shape, 1, np.uint8), np.full(target.shape, 2, np.uint8)
    weights = local_weights(target, [image1, image2], (1.0, 1.0, 1.0), sigma_mm=1.0)
    fused = fuse([labels1, labels2], weights)
    assert (fused[:8] == 1).all() and (fused[12:] == 2).all()  # away from the seam, the better atlas wins
    assert (fuse([labels1, labels2]) == 1).all()  # a majority vote cannot tell: the tie goes to the first


def test_label_sets_must_agree():
    check_label_sets([[0, 1, 2], [2, 1, 0]], ["a", "b"])
    with pytest.raises(api.InputError, match=r"b has labels \[5\] that a has not"):
        check_label_sets([[0, 1, 2], [0, 1, 5]], ["a", "b"])
    with pytest.warns(UserWarning, match=r"b lacks labels \[2\] of a"):  # a structure absent in that subject
        check_label_sets([[0, 1, 2], [0, 1]], ["a", "b"])


def test_several_atlases_registered_onto_one_target_and_fused(tmp_path):
    atlas, atlas_labels = phantom()
    target, target_labels = phantom(shift=1.0)
    list(registration_engine(atlas, atlas_labels, [target], tmp_path / "r.pt", config=config(steps=30)))
    model = RegistrationModel.load(tmp_path / "r.pt", device="cpu")
    far, far_labels = phantom(shift=7.0)  # a poor atlas: barely registered after 30 steps, it disagrees
    atlases = [(far, far_labels), (atlas, atlas_labels)]
    majority = model.register_atlases(atlases, target, fusion="majority", refine_steps=0)
    local = api.register_atlases(model, atlases, target, fusion="local", refine_steps=0)
    assert local.labels.shape == target.shape and np.array_equal(local.labels.affine, target.affine)
    assert local.labels.kind == "labels" and len(local.results) == 2
    poor, good = (r.warped_labels.array for r in local.results)
    assert np.array_equal(majority.labels.array, poor)  # two votes tie everywhere: the first atlas wins
    assert dice(local.labels.array, target_labels.array) > dice(poor, target_labels.array) + 0.1
    assert dice(local.labels.array, target_labels.array) >= dice(good, target_labels.array) - 0.05
    odd = far_labels.with_array(np.where(far_labels.array == 2, 3, far_labels.array).astype(np.uint8))
    with pytest.raises(api.InputError, match="must hold the same structures"):
        model.register_atlases([(atlas, atlas_labels), (far, odd)], target)
    with pytest.raises(api.InputError, match="fusion is one of"):
        model.register_atlases(atlases, target, fusion="vote")
