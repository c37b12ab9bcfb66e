"""Batch segmentation: each torchrun rank's share of a folder (no overlap, no gaps), inputs read ahead in the
background, finished outputs skipped (a stopped batch resumes). Tiny volumes and models."""

import threading
import time

import pytest
from test_cotrain import TINY, cfg
from test_registration import config as reg_config
from test_registration import phantom

from napari_rrl_medsam import api
from napari_rrl_medsam.core.batch import process_share, read_ahead
from napari_rrl_medsam.core.engines.cotrain import cotrain_engine
from napari_rrl_medsam.core.engines.register import registration_engine
from napari_rrl_medsam.core.models.encoder import LightEncoder
from napari_rrl_medsam.core.registration import RegistrationModel


def test_the_ranks_shares_are_disjoint_and_cover_the_list(monkeypatch):
    items = list(range(11))
    for world in (1, 2, 3):
        shares = [process_share(items, rank, world) for rank in range(world)]
        assert sorted(i for share in shares for i in share) == items
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert process_share(items) == [1, 3, 5, 7, 9]  # torchrun's environment
    with pytest.raises(ValueError, match="rank 2"):
        process_share(items, 2, 2)


def test_the_next_input_loads_while_this_one_is_worked_on():
    log, lock = [], threading.Lock()

    def load(i):
        with lock:
            log.append(("load", i, threading.current_thread() is threading.main_thread()))
        return i * 10

    results = []
    for item, value in read_ahead([0, 1, 2], load):
        time.sleep(0.1)  # the work on this item; the next one is read meanwhile
        results.append((item, value))
        with lock:
            log.append(("done", item, True))
    assert results == [(0, 0), (1, 10), (2, 20)]
    assert log.index(("load", 1, False)) < log.index(("done", 0, True))  # in the background, ahead of time
    assert not any(entry[0] == "load" and entry[2] for entry in log)


def test_batch_segmentation_shards_across_ranks_and_resumes(tmp_path, monkeypatch):
    atlas, labels = phantom()
    targets = [phantom(shift=s)[0] for s in (1.0, -1.0, 2.0)]
    list(registration_engine(atlas, labels, targets[:1], tmp_path / "r.pt", config=reg_config(steps=1)))
    registration = RegistrationModel.load(tmp_path / "r.pt", device="cpu")
    list(cotrain_engine(atlas, labels, targets[:1], registration, tmp_path / "m.pt", LightEncoder(TINY), cfg(steps=1)))
    folder = tmp_path / "scans"
    for i, volume in enumerate(targets):
        api.save_volume(volume, folder / f"s{i}.nii.gz")
    out = tmp_path / "out"
    monkeypatch.setenv("WORLD_SIZE", "2")
    done = {}
    for rank in (0, 1):  # two torchrun processes, one after the other here
        monkeypatch.setenv("RANK", str(rank))
        done[rank] = [p.name for p, written, _ in api.segment_batch(tmp_path / "m.pt", [folder], out, device="cpu")]
    assert done == {0: ["s0.nii.gz", "s2.nii.gz"], 1: ["s1.nii.gz"]}  # no overlap, no gaps
    assert sorted(p.name for p in out.iterdir()) == ["s0_labels.nii.gz", "s1_labels.nii.gz", "s2_labels.nii.gz"]
    written = api.load_volume(out / "s1_labels.nii.gz")
    assert written.shape == targets[1].shape and (written.affine == targets[1].affine).all()
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(FileExistsError, match="exists"):  # never replaced without intent
        next(api.segment_batch(tmp_path / "m.pt", [folder], out))
    (out / "s1_labels.nii.gz").unlink()  # a batch stopped before s1 was written
    again = [(p.name, w is None) for p, w, _ in api.segment_batch(tmp_path / "m.pt", [folder], out, skip_existing=True)]
    assert sorted(again) == [("s0.nii.gz", True), ("s1.nii.gz", False), ("s2.nii.gz", True)]
    assert (out / "s1_labels.nii.gz").exists()
