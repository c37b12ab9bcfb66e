"""What a training engine yields: one `Progress` event per step (and per preparation chunk).

Engines are generators so every face drives them the same way: the CLI prints events, the napari
worker forwards them to layers and plots. Closing the generator stops training; the engine saves a
checkpoint on the way out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Progress:
    """`stage` is a phase name (e.g. "teacher", "natural", "medical"); `step` counts from 1 to `total`."""

    stage: str
    step: int
    total: int
    losses: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    preview: dict[str, Any] | None = None  # arrays for live display (napari layers)
    checkpoint: Path | None = None  # set when a checkpoint was just written
    message: str = ""


def run(events, progress: bool = True) -> Progress | None:
    """Drive an engine to the end; with `progress`, one tqdm bar per stage showing the latest losses.

    Ctrl-C closes the engine (which saves its checkpoint) and re-raises. Under torchrun only rank 0 shows progress,
    saying first how many processes train and over which backend.
    """
    from tqdm.auto import tqdm

    from .distributed import current

    bar, stage, last, metrics, said = None, None, None, {}, False
    try:
        for last in events:
            process = current()
            if not progress or not process.main:
                continue
            if process.world > 1 and not said:
                said = True
                tqdm.write(f"distributed training: {process.world} processes, backend {process.backend}; rank 0 "
                           "writes the checkpoints")  # fmt: skip
            if last.stage != stage:
                if bar is not None:
                    bar.close()
                stage, metrics = last.stage, {}  # a stage shows its own metrics only
                training = bool(last.losses)  # training steps count one by one; preparation in chunks
                bar = tqdm(
                    total=last.total,
                    desc=last.message or stage,
                    unit="step" if training else "image",
                    initial=last.step - 1 if training else 0,
                )
            bar.update(last.step - bar.n)
            metrics.update(last.metrics)  # shown until the next evaluation
            if last.losses or last.metrics:
                bar.set_postfix({k: f"{v:.4g}" for k, v in {**last.losses, **metrics}.items()}, refresh=False)
    finally:
        if bar is not None:
            bar.close()
        events.close()
    return last
