"""What a training engine yields: one `Progress` event per step (and per preparation chunk).

Engines are generators so every face drives them the same way: the CLI prints events, the napari
worker forwards them to layers and plots. Closing the generator stops training; the engine saves a
checkpoint on the way out.
"""

from __future__ import annotations

from collections.abc import Sequence
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


# settings that say how a run is driven, not what it trains: a resumed run takes them from the caller,
# everything else from its checkpoint
RUN_SETTINGS = ("steps", "device", "checkpoint_every", "preview_every", "validate_every")


def resumed_settings(saved: dict, given: Any) -> dict:
    """A resumed run's config dict: the checkpoint's `saved` config with the caller's run settings on top.

    Args:
        saved: the config dict stored in the checkpoint.
        given: the caller's config dataclass.
    """
    return {**saved, **{k: getattr(given, k) for k in RUN_SETTINGS if hasattr(given, k)}}


def initialised_settings(saved: dict, given: Any, architecture: Sequence[str]) -> dict:
    """A fine-tuning run's config dict: the caller's settings, with the `architecture` fields of the model it
    starts from (`saved`, that model's config dict).

    Args:
        saved: the config dict of the checkpoint the run starts from.
        given: the caller's config dataclass.
        architecture: the fields that shape the model.
    """
    return {**given.to_dict(), **{k: saved[k] for k in architecture if k in saved}}


def check_finite(loss: Any, stage: str, step: int) -> None:
    """Stop a run whose loss became NaN or infinite, before the step's update reaches the weights.

    Args:
        loss: the step's loss (a scalar tensor).
        stage: the training stage, for the message.
        step: the step being taken (1-based).
    """
    import math

    from ..errors import InputError

    value = float(loss.detach())
    if not math.isfinite(value):
        raise InputError(
            f"{stage} diverged at step {step} (loss {value}); the weights of the steps before are "
            "saved. Check the inputs for NaN values, or resume with a lower learning rate."
        )


def due(step: int, every: int, total: int) -> bool:
    """Whether a periodic action (checkpoint, preview) falls on `step`: every `every` steps and at the end."""
    return step == total or (every > 0 and step % every == 0)


def run(events, progress: bool = True) -> Progress | None:
    """Drive an engine to the end; with `progress`, one tqdm bar per stage showing the latest losses.

    Ctrl-C closes the engine (which saves its checkpoint) and re-raises.
    """
    from tqdm.auto import tqdm

    bar, stage, last, metrics = None, None, None, {}
    try:
        for last in events:
            if not progress:
                continue
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
            if last.losses:
                bar.set_postfix({k: f"{v:.4g}" for k, v in {**last.losses, **metrics}.items()}, refresh=False)
    finally:
        if bar is not None:
            bar.close()
        events.close()
    return last
