"""Training under torchrun: two processes (gloo on the CPU, one thread each) train each engine a few steps on tiny
volumes; the weights are the same on both ranks after every step though each rank draws its own data, only rank 0
writes the checkpoint, and one process resumes it (another world size)."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from test_cotrain import TINY, cfg
from test_distill import CountingConv
from test_distill import config as distill_config
from test_registration import config as reg_config
from test_registration import phantom

from napari_rrl_medsam.core.cache import EmbeddingCache
from napari_rrl_medsam.core.checkpoint import load_checkpoint
from napari_rrl_medsam.core.engines.cotrain import cotrain_engine
from napari_rrl_medsam.core.engines.distill import distill_engine
from napari_rrl_medsam.core.engines.register import registration_engine
from napari_rrl_medsam.core.models.encoder import LightEncoder
from napari_rrl_medsam.core.registration import RegistrationModel
from napari_rrl_medsam.core.teachers import Teacher

STEPS = 4


def volumes():
    atlas, labels = phantom()
    return atlas, labels, [phantom(shift=s)[0] for s in (1.0, -1.5, 2.0)]


def engine(name: str, folder, steps: int = STEPS, resume: bool = False, rank: int = 0):
    """The named engine's events, writing `folder/<name>.pt`."""
    atlas, labels, targets = volumes()
    out = folder / f"{name}.pt"
    if name == "registration":
        return registration_engine(atlas, labels, targets, out, config=reg_config(steps=steps), resume=resume)
    if name == "cotrain":
        torch.manual_seed(1)
        registration = RegistrationModel.load(folder / "teacher.pt", device="cpu")
        config = cfg(steps=steps, atlas_probability=0.3, synthetic_probability=0.3, preview_every=0)
        return cotrain_engine(atlas, labels, targets, registration, out, LightEncoder(TINY), config, resume=resume)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 32, 32, generator=g), torch.rand(6, 3, 32, 32, generator=g)
    teacher = Teacher(CountingConv(), "tiny", "random" * 4, input_size=32)
    config = distill_config(natural_steps=2, medical_steps=steps - 2)
    return distill_engine(teacher, *images, out, config, resume=resume, cache=EmbeddingCache(folder / f"cache{rank}"))


def weights(modules) -> np.ndarray:
    """The trained parameters (batch-norm statistics are each rank's own until DDP broadcasts rank 0's before the
    next step)."""
    return np.concatenate([p.detach().double().flatten().numpy() for m in modules for p in m.parameters()])


def rank_process(rank: int, world: int, port: int, name: str, folder) -> None:
    """One torchrun-like process: trains `name`, records its weights after every step and its checkpoint writes."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from napari_rrl_medsam.core.engines import loop
    from napari_rrl_medsam.core.engines.distributed import current, gather

    record = {"weights": [], "saves": 0}
    update, save = loop.Loop._update, loop.save_checkpoint

    def traced_update(self, scaler, device):
        out = update(self, scaler, device)
        record["weights"].append(weights(self.modules))
        return out

    def traced_save(state, path):
        record["saves"] += 1
        return save(state, path)

    loop.Loop._update, loop.save_checkpoint = traced_update, traced_save
    events = list(engine(name, folder, rank=rank))
    record["losses"] = [e.losses["loss"] for e in events if e.losses]
    record["pseudo labels"] = [e.preview["case"] for e in events if e.stage == "pseudo labels"]
    process = current()
    record["gathered"] = gather({i: i * 10 for i in range(5) if process.owns(i)}, 5, process)
    record["process"] = (process.rank, process.world, process.backend)
    torch.save(record, folder / f"rank{rank}.pt")
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name", ["registration", "cotrain", "distill"])
def test_two_processes_train_identical_weights_and_rank_0_writes_a_checkpoint_that_resumes(tmp_path, name):
    if name == "cotrain":  # the registration network that makes the pseudo labels
        atlas, labels, targets = volumes()
        list(registration_engine(atlas, labels, targets, tmp_path / "teacher.pt", config=reg_config(steps=2)))
    mp.spawn(rank_process, args=(2, free_port(), name, tmp_path), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [r["process"] for r in ranks] == [(0, 2, "gloo"), (1, 2, "gloo")]
    assert len(ranks[0]["weights"]) == STEPS
    for a, b in zip(ranks[0]["weights"], ranks[1]["weights"]):
        assert np.array_equal(a, b)  # the same weights after every step
    assert not np.array_equal(ranks[0]["weights"][0], ranks[0]["weights"][-1])  # and they trained
    assert ranks[0]["losses"] != ranks[1]["losses"]  # on different draws
    assert ranks[0]["saves"] >= 1 and ranks[1]["saves"] == 0  # only rank 0 writes
    assert ranks[0]["gathered"] == ranks[1]["gathered"] == [0, 10, 20, 30, 40]
    if name == "cotrain":  # the pseudo labels were shared out: each volume computed once
        assert ranks[0]["pseudo labels"] == [0, 2] and ranks[1]["pseudo labels"] == [1]
    state = load_checkpoint(tmp_path / f"{name}.pt")
    assert state["step"] == STEPS and state["world_size"] == 2
    # one process resumes the two processes' checkpoint and trains two more steps
    events = [e for e in engine(name, tmp_path, steps=STEPS + 2, resume=True) if e.losses]
    assert [e.step for e in events] == [STEPS + 1, STEPS + 2]
    resumed = load_checkpoint(tmp_path / f"{name}.pt")
    assert resumed["step"] == STEPS + 2 and resumed["world_size"] == 1
