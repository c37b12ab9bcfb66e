"""Training in several processes with PyTorch's own engine.

torchrun starts the processes and puts RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in their
environment; `join` adds this process to the group (`torch.distributed`, gloo on the CPU, nccl on CUDA: one GPU per
process, LOCAL_RANK's); `replicate` runs a training step through `DistributedDataParallel`, which averages the
gradients of every rank before the optimiser step, so the weights (and the mutual EMA that follows them) stay the
same on every rank. Each rank draws its own volumes and slabs (the step's generator is seeded with its rank too);
only rank 0 writes checkpoints and shows progress. Work done once before training (pseudo labels, registration
fields) is shared out: each rank computes every `world`-th item and `gather` sends them to all ranks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..device import process_device, resolve_device


@dataclass(frozen=True)
class Process:
    """This process's place: `rank` of `world` processes, the group's `backend` (None: one process)."""

    rank: int = 0
    world: int = 1
    backend: str | None = None

    @property
    def main(self) -> bool:
        """Rank 0: writes checkpoints, logs and progress bars."""
        return self.rank == 0

    def owns(self, index: int) -> bool:
        """Whether this rank computes item `index` of work shared out (every `world`-th from its rank)."""
        return index % self.world == self.rank


SINGLE = Process()  # one process, no group


def launched() -> bool:
    """Whether this process was started as one of several (torchrun's WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> Process:
    """This process in the group it joined (one process when none)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return Process(dist.get_rank(), dist.get_world_size(), dist.get_backend())


def join(device: Any = "auto") -> tuple[Process, Any]:
    """Join torchrun's process group (once per process) and choose this process's device.

    Args:
        device: the run's device setting ("auto", "cpu", "cuda"): under torchrun "auto" and "cuda" mean this
            process's GPU (LOCAL_RANK's).

    Returns:
        (`Process`, torch.device); one process outside torchrun.
    """
    import torch
    import torch.distributed as dist

    device = resolve_device(process_device(device))
    if not launched():
        return Process(), device
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return current(), device


def replicate(step: Callable, modules: Sequence[Any], device: Any, process: Process) -> Callable:
    """The training step, run through `DistributedDataParallel` over `modules` when there are several processes
    (the step itself otherwise): its loss's backward pass averages every trained parameter's gradient over the ranks.

    Args:
        step: `step(index, generator) -> StepOutput`.
        modules: the trained modules (the parameters that get gradients).
        device: their device.
        process: this process.
    """
    if process.world == 1:
        return step
    import torch
    from torch.nn.parallel import DistributedDataParallel

    if not modules:
        raise ValueError("distributed training needs the trained modules, to average their gradients")

    class Step(torch.nn.Module):  # the modules as one, its forward the step's loss (what DDP follows)
        def __init__(self) -> None:
            super().__init__()
            self.parts, self.out = torch.nn.ModuleList(modules), None

        def forward(self, index: int, gen):
            self.out = step(index, gen)
            return self.out.loss

    holder = Step()
    ids = [device.index] if device.type == "cuda" else None
    # a static graph: every step uses the same parameters, which may leave some out (the encoders' layers that slab
    # features do not use, the registration network's feature branch without features); DDP finds them once
    ddp = DistributedDataParallel(holder, device_ids=ids, static_graph=True)

    def run(index: int, gen):
        loss = ddp(index, gen)  # DDP hands back its own tensor: the backward pass must start from it
        holder.out.loss = loss
        return holder.out

    return run


def gather(values: dict[int, Any], n: int, process: Process) -> list:
    """Items 0 .. n-1 on every rank, each computed by the rank that `owns` it (`values`: this rank's, by index).

    Args:
        values: this rank's items (all of them with one process).
        n: how many there are.
        process: this process.
    """
    if process.world == 1:
        return [values[i] for i in range(n)]
    import torch.distributed as dist

    out = []
    for i in range(n):
        box = [values.get(i)]
        dist.broadcast_object_list(box, src=i % process.world)
        out.append(box[0])
    return out


def barrier(process: Process) -> None:
    """Wait for every rank (e.g. until rank 0 has written the checkpoint the others read next)."""
    if process.world > 1:
        import torch.distributed as dist

        dist.barrier()
