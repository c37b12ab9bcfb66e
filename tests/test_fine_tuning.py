"""Fine-tuning (`init`): a new run that starts from a trained model's weights, e.g. a joint round's registration
with Dice coupling, then co-training on its pseudo labels. Tiny volumes."""

import numpy as np
import pytest
import torch
from test_cotrain import TINY, cfg
from test_registration import config as reg_config
from test_registration import phantom

from napari_rrl_medsam.api import InputError
from napari_rrl_medsam.core.checkpoint import load_checkpoint
from napari_rrl_medsam.core.engines.cotrain import cotrain_engine
from napari_rrl_medsam.core.engines.register import registration_engine
from napari_rrl_medsam.core.models.encoder import LightEncoder
from napari_rrl_medsam.core.registration import RegistrationModel


def test_fine_tuning_starts_from_a_trained_model_with_new_settings(tmp_path):
    """`init`: the trained weights, this run's training settings, a new run (the joint round's building block)."""
    atlas, labels = phantom()
    targets = [phantom(shift=1.0)[0]]
    list(registration_engine(atlas, labels, targets, tmp_path / "a.pt", config=reg_config(steps=3)))
    # lr 0: a fine-tuned run that cannot move keeps its init's weights exactly
    list(
        registration_engine(
            atlas,
            labels,
            targets,
            tmp_path / "b.pt",
            init=tmp_path / "a.pt",
            segmentations=[labels.with_array(labels.array)],
            config=reg_config(steps=2, lr=0.0, dice_weight=1.0, smooth_weight=9.0),
        )
    )
    a, b = load_checkpoint(tmp_path / "a.pt"), load_checkpoint(tmp_path / "b.pt")
    assert all(torch.equal(a["network"][k], b["network"][k]) for k in a["network"])
    assert b["step"] == 2 and b["config"]["dice_weight"] == 1.0 and b["config"]["smooth_weight"] == 9.0
    assert b["initialised_from"] == str(tmp_path / "a.pt")
    more = labels.with_array(np.where(labels.array == 2, 3, labels.array).astype(np.uint8))
    with pytest.raises(InputError, match="label values"):
        next(
            registration_engine(
                atlas, more, targets, tmp_path / "c.pt", init=tmp_path / "a.pt", config=reg_config(steps=2)
            )
        )

    registration = RegistrationModel.load(tmp_path / "a.pt", device="cpu")
    encoder = LightEncoder(TINY)
    list(cotrain_engine(atlas, labels, targets, registration, tmp_path / "m.pt", encoder, cfg(steps=2)))
    list(
        cotrain_engine(
            atlas,
            labels,
            targets,
            registration,
            tmp_path / "n.pt",
            None,
            cfg(steps=1, lr=0.0, encoder_lr=0.0, decoder_width=16),
            init=tmp_path / "m.pt",
        )
    )
    m, n = load_checkpoint(tmp_path / "m.pt"), load_checkpoint(tmp_path / "n.pt")
    assert n["config"]["decoder_width"] == 8  # the architecture is the init's
    for part in ("decoder_g", "ap"):  # (encoders move with mutual EMA even at lr 0; decoders do not)
        assert all(
            torch.equal(m["parts"][part][k], n["parts"][part][k])
            for k in m["parts"][part]
            if m["parts"][part][k].is_floating_point() and "running" not in k
        )


def test_self_training_round_fuses_the_model_and_the_registration(tmp_path):
    """`pseudo_model`: pseudo labels are the co-trained model's predictions fused with the registration's (the
    fused rule of `segment`'s prior, on the working grid); the checkpoint records the model, and a resume with
    another source of pseudo labels is refused."""
    from napari_rrl_medsam.core.segmentation import SegmentationModel

    atlas, labels = phantom()
    targets = [phantom(shift=1.0)[0]]
    list(registration_engine(atlas, labels, targets, tmp_path / "r.pt", config=reg_config(steps=2)))
    registration = RegistrationModel.load(tmp_path / "r.pt", device="cpu")
    list(cotrain_engine(atlas, labels, targets, registration, tmp_path / "m.pt", LightEncoder(TINY), cfg(steps=2)))
    model = SegmentationModel.load(tmp_path / "m.pt", device="cpu")
    reg_pseudo = registration.pseudo_labels(atlas, labels, targets[0])
    own = model.working_labels(targets[0])
    # at weight 0 the pseudo labels are the model's own, at 0.49 mostly the registration's
    for w, expected in ((0.0, own), (0.3, model.working_labels(targets[0], reg_pseudo, 0.3))):
        events = list(
            cotrain_engine(
                atlas,
                labels,
                targets,
                registration,
                tmp_path / f"s{w}.pt",
                None,
                cfg(steps=1, pseudo_prior_weight=w),
                init=tmp_path / "m.pt",
                pseudo_model=model,
            )
        )
        shown = [e.preview["pseudo_labels"] for e in events if e.stage == "pseudo labels"]
        np.testing.assert_array_equal(shown[0], expected)
    assert not np.array_equal(own, reg_pseudo)  # so the test above could tell them apart
    assert np.mean(model.working_labels(targets[0], reg_pseudo, 0.49) == reg_pseudo) > np.mean(own == reg_pseudo)
    state = load_checkpoint(tmp_path / "s0.3.pt")
    assert state["pseudo_model"] == str((tmp_path / "m.pt").resolve())
    with pytest.raises(InputError, match="resume it with pseudo_model="):
        next(
            cotrain_engine(atlas, labels, targets, registration, tmp_path / "s0.3.pt", None, cfg(steps=3), resume=True)
        )
    with pytest.raises(InputError, match="pseudo_prior_weight"):
        next(
            cotrain_engine(
                atlas,
                labels,
                targets,
                registration,
                tmp_path / "x.pt",
                None,
                cfg(steps=1, pseudo_prior_weight=0.5),
                init=tmp_path / "m.pt",
                pseudo_model=model,
            )
        )
