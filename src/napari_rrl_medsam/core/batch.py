"""Work over many volumes: each process's share of the list (under torchrun, by rank) and inputs read ahead in a
background thread, so reading the next volume overlaps the work on this one."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def process_share(items: Sequence[T], rank: int | None = None, world: int | None = None) -> list[T]:
    """This process's items: every `world`-th from `rank` on (torchrun's RANK and WORLD_SIZE by default; one process:
    all of them). The shares of all ranks are disjoint and together hold every item.

    Args:
        items: the whole list, in the same order on every rank.
        rank, world: this process's rank and the number of processes.
    """
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", 1)) if world is None else world
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not one of the {world} processes")
    return list(items[rank::world])


def read_ahead(items: Sequence[T], load: Callable[[T], Any]) -> Iterator[tuple[T, Any]]:
    """(item, load(item)) for each item in order, the next one loading in a background thread meanwhile.

    Args:
        items: what to load (e.g. volume files).
        load: reads one (an error is raised when its item's turn comes).
    """
    if not items:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load, items[0])
        for i, item in enumerate(items):
            value = pending.result()
            if i + 1 < len(items):
                pending = pool.submit(load, items[i + 1])
            yield item, value
