"""The one training loop every engine runs: resume, per-step randomness, checkpoint cadence, save-on-exit and hooks.

An engine is its preparation (events of its own, e.g. pseudo labels), its step and its hooks, as MONAI's engines
are a loop plus handlers: the step turns (step index, the step's random generator) into a loss; the loop takes the
optimiser step (learning rates, finite check, mixed precision), writes checkpoints every so many steps and on the
way out (Stop, Ctrl-C, an error), and runs the hooks that are due (previews for live layers, validation metrics)
with the trained modules in evaluation mode. Every random draw of a step comes from its generator, seeded by
(seed, step) and, under torchrun, the rank: a resumed run draws what an uninterrupted one would. With several
processes (`distributed.py`) the step runs through DistributedDataParallel and only rank 0 writes checkpoints and
runs the hooks; every rank ends the run together.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint import load_checkpoint, resume_state, save_checkpoint
from .distributed import barrier, current, replicate
from .events import Progress

# settings that say how a run is driven, not what it trains: a resumed run takes them from the caller,
# everything else from its checkpoint
RUN_SETTINGS = ("steps", "device", "checkpoint_every", "preview_every", "validate_every", "amp")


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


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """The seed of step `step`'s generator (0-based) on rank `rank`: seed * 1,000,003 + step on rank 0 (one process),
    a 32-bit hash of (seed, step, rank) on the others (torch's CPU generator keeps 32 bits of its seed)."""
    if rank == 0:
        return seed * 1_000_003 + step
    import numpy as np

    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def due(step: int, every: int, total: int) -> bool:
    """Whether a periodic action (checkpoint, preview) falls on `step`: every `every` steps and at the end."""
    return step == total or (every > 0 and step % every == 0)


@dataclass
class StepOutput:
    """What a training step gives the loop.

    Args:
        loss: the scalar loss tensor to minimise.
        terms: its parts as floats, shown beside it in the events.
        stage: the event's stage name, when it changes within a run (DSKD's "natural" / "medical").
        context: what the step's hooks read (e.g. which volume it trained on, its displacement field).
    """

    loss: Any
    terms: dict[str, float] = field(default_factory=dict)
    stage: str | None = None
    context: Any = None


@dataclass
class Hook:
    """Something done every `every` steps and at the last one (0: never), its dict going into the event.

    Args:
        every: the cadence in steps.
        run: called with the step's `StepOutput` (modules in evaluation mode), returns a dict.
        into: "preview" (arrays for live layers) or "metrics" (validation figures).
    """

    every: int
    run: Callable[[StepOutput], dict]
    into: str = "metrics"


@dataclass
class Start:
    """Where a run starts: `state` its own checkpoint when resuming, `weights` the checkpoint whose weights it
    starts from (`state`, else `init`'s, else None), `config` its settings, `origin` the model it was
    fine-tuned from (recorded in its checkpoints)."""

    state: dict | None
    weights: dict | None
    config: Any
    origin: str | None
    first_step: int = 0  # a continued model's step count (`proceed`), else 0


def starting_point(
    checkpoint: str | Path,
    kind: str,
    resume: bool,
    config: Any,
    init: str | Path | None = None,
    architecture: Sequence[str] = (),
    proceed: bool = False,
) -> Start:
    """Resolve a run's start: resume its checkpoint (its settings, the caller's run settings), fine-tune `init`
    (the caller's settings, `init`'s `architecture` fields) or start anew; an existing checkpoint is never replaced
    without `resume`.

    Args:
        checkpoint: the run's checkpoint file.
        kind: the checkpoint kind ("registration", "rrl-medsam", "distill").
        resume: continue `checkpoint` if it exists.
        config: the caller's config dataclass (copied, never changed).
        init: a checkpoint of the same kind to fine-tune from.
        architecture: the config fields that shape the model, kept from `init`.
        proceed: with `init`, continue its step count: the run starts at `init`'s step and takes `config.steps`
            more (e.g. a model continued with more labelled volumes).
    """
    config = copy.deepcopy(config)
    state = resume_state(checkpoint, kind, resume)
    weights = load_checkpoint(init, kind) if init is not None and state is None else None
    first = 0
    if proceed:  # a continued run ends `steps` after its model's step, also when resumed
        first = int(state.get("first_step", 0)) if state is not None else int(weights["step"]) if weights else 0
        config.steps += first
    if state is not None:
        settings = type(config).from_dict(resumed_settings(state["config"], config))
        return Start(state, state, settings, state.get("initialised_from"), first)
    if weights is not None:
        merged = type(config).from_dict(initialised_settings(weights["config"], config, architecture))
        return Start(None, weights, merged, str(init), first)
    return Start(None, None, config, None)


class Loop:
    """Run `step` from the start's step to the run's last, yielding one `Progress` per step.

    Args:
        name: the run's name in messages ("registration training", ...).
        stage: the events' stage name (a step's `StepOutput.stage` overrides it).
        config: the run's settings: `seed` (step i's generator is seeded with seed * 1,000,003 + i),
            `checkpoint_every`, `steps` (unless `total` is given); stored in the checkpoint (`to_dict`).
        step: the training step, `step(index, generator) -> StepOutput` (index counts from 0).
        optimiser: a torch optimiser over the trained parameters.
        checkpoint: the file written every `checkpoint_every` steps, at `milestones`, at the end and on exit.
        kind: the checkpoint kind.
        start: the run's `Start` (a resumed run continues its step, optimiser state and elapsed time).
        contents: the checkpoint's entries (weights, task) besides those the loop writes: kind, version, step,
            completeness, config, optimiser state, elapsed training time and the model it was fine-tuned from.
        total: the step the run ends at (default `config.steps`).
        milestones: further steps that are saved (e.g. the end of a stage).
        hooks: previews and validation.
        rates: per parameter group learning rates at a step index (None: constant).
        after_step: called after each optimiser step (e.g. mutual EMA).
        autocast: the step's autocast dtype (`device.training_dtype`): float16 (with a gradient scaler) or
            bfloat16; None: float32.
    """

    def __init__(
        self,
        name: str,
        stage: str,
        config: Any,
        step: Callable[[int, Any], StepOutput],
        optimiser: Any,
        checkpoint: str | Path,
        kind: str,
        start: Start,
        contents: Callable[[], dict],
        total: int | None = None,
        milestones: Sequence[int] = (),
        hooks: Sequence[Hook] = (),
        rates: Callable[[int], Sequence[float]] | None = None,
        after_step: Callable[[], None] | None = None,
        autocast: Any = None,
    ) -> None:
        self.name, self.stage, self.config, self.train_step = name, stage, config, step
        self.total = config.steps if total is None else total
        self.optimiser, self.checkpoint, self.kind, self.origin = optimiser, Path(checkpoint), kind, start.origin
        self.contents, self.milestones, self.hooks, self.modules = contents, tuple(milestones), hooks, ()
        self.rates, self.after_step, self.autocast = rates, after_step, autocast
        self.step, self.elapsed, self.saved, self.first = 0, 0.0, -1, start.first_step
        self.process, self.forward = current(), step
        if start.state is not None:
            optimiser.load_state_dict(start.state["optimizer"])
            self.step = self.saved = int(start.state["step"])
            self.elapsed = float(start.state.get("elapsed", 0.0))
        else:  # a new run (a continued model: from its step); saved on the way out even before its first step
            self.step = start.first_step

    def save(self) -> Path | None:
        """Write the checkpoint now (atomically; rank 0 only, other ranks return None)."""
        if not self.process.main:
            self.saved = self.step
            return None
        state = {
            "kind": self.kind,
            "version": 1,
            "step": self.step,
            "complete": self.step >= self.total,
            "config": self.config.to_dict(),
            "optimizer": self.optimiser.state_dict(),
            "elapsed": self.elapsed,
            "initialised_from": self.origin,
            "first_step": self.first,
            "world_size": self.process.world,
            **self.contents(),
        }
        path = save_checkpoint(state, self.checkpoint)
        self.saved = self.step
        return path

    def run(self, modules: Sequence[Any] = ()) -> Iterator[Progress]:
        """The training events; closing the generator (or an error) saves the checkpoint first.

        Args:
            modules: the trained modules: in evaluation mode while hooks run, in training mode for the steps (with
                several processes, their gradients are averaged over the ranks).
        """
        import torch

        self.modules = list(modules)
        for module in self.modules:
            module.train()
        device = _device_of(self.optimiser)
        self.forward = replicate(self.train_step, self.modules, _parameter_device(self.optimiser), self.process)
        scaler = torch.amp.GradScaler(device, enabled=self.autocast is torch.float16)
        try:
            while self.step < self.total:
                started = time.perf_counter()
                out = self._update(scaler, device)
                self.step += 1
                self.elapsed += time.perf_counter() - started
                path = self.save() if self._save_due() else None
                extras = self._hooks(out)
                losses = {"loss": float(out.loss.detach()), **out.terms}
                yield Progress(out.stage or self.stage, self.step, self.total, losses, checkpoint=path, **extras)
        finally:
            if self.step != self.saved:
                self.save()
        barrier(self.process)  # the other ranks go on once rank 0's last checkpoint is written

    def _update(self, scaler, device: str) -> StepOutput:
        """One optimiser step; the loss is checked before the update reaches the weights."""
        import torch

        gen = torch.Generator().manual_seed(step_seed(self.config.seed, self.step, self.process.rank))
        with torch.autocast(device, dtype=self.autocast, enabled=self.autocast is not None):
            out = self.forward(self.step, gen)
        if self.autocast is not torch.float16:  # in float16 the grad scaler skips overflowing steps itself
            check_finite(out.loss, self.name, self.step + 1)
        self.optimiser.zero_grad(set_to_none=True)
        scaler.scale(out.loss).backward()
        if self.rates is not None:
            for group, rate in zip(self.optimiser.param_groups, self.rates(self.step)):
                group["lr"] = rate
        scaler.step(self.optimiser)
        scaler.update()
        if self.after_step is not None:
            self.after_step()
        return out

    def _save_due(self) -> bool:
        return due(self.step, self.config.checkpoint_every, self.total) or self.step in self.milestones

    def _hooks(self, out: StepOutput) -> dict:
        """The due hooks' dicts, as `Progress` keyword arguments (modules in evaluation mode meanwhile)."""
        hooks = [h for h in self.hooks if h.every and due(self.step, h.every, self.total)]
        extras = {"preview": None, "metrics": {}}
        if not hooks or not self.process.main:
            return extras
        for module in self.modules:
            module.eval()
        for hook in hooks:
            result = hook.run(out)
            extras[hook.into] = {**(extras[hook.into] or {}), **result}
        for module in self.modules:
            module.train()
        return extras


def _parameter_device(optimiser):
    """The device of the optimiser's parameters."""
    import torch

    params = [p for group in optimiser.param_groups for p in group["params"]]
    return params[0].device if params else torch.device("cpu")


def _device_of(optimiser) -> str:
    """The device type ("cpu", "cuda") of the optimiser's parameters."""
    return _parameter_device(optimiser).type
