"""The one training loop (core/engines/loop.py) on a tiny linear model: resume, cadence, hooks, save-on-exit."""

from dataclasses import asdict, dataclass

import pytest
import torch

from napari_rrl_medsam.api import InputError
from napari_rrl_medsam.core.checkpoint import load_checkpoint
from napari_rrl_medsam.core.engines.loop import Hook, Loop, StepOutput, starting_point


@dataclass
class Settings:
    steps: int = 6
    lr: float = 0.1
    checkpoint_every: int = 4
    seed: int = 3

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        return cls(**d)


class Run:
    """A linear model fitted to random targets drawn from each step's generator."""

    def __init__(self, path, settings, resume=False, hooks=(), fail_at=None, milestones=()):
        self.start = starting_point(path, "toy", resume, settings)
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.Dropout(0.0))
        if self.start.weights is not None:
            self.net.load_state_dict(self.start.weights["net"])
        self.fail_at, self.modes = fail_at, []
        optimiser = torch.optim.SGD(self.net.parameters(), lr=self.start.config.lr)
        self.loop = Loop(
            "toy training",
            "toy",
            self.start.config,
            self.step,
            optimiser,
            path,
            "toy",
            self.start,
            lambda: {"net": self.net.state_dict()},
            milestones=milestones,
            hooks=hooks,
            rates=lambda i: [self.start.config.lr / (1 + i)],
        )

    def step(self, index, gen):
        self.modes.append(self.net.training)
        x, y = torch.rand(4, 2, generator=gen), torch.rand(4, 1, generator=gen)
        loss = ((self.net(x) - y) ** 2).mean() * (float("nan") if index == self.fail_at else 1.0)
        return StepOutput(loss, {"half": float(loss.detach()) / 2}, context=index)

    def events(self):
        return self.loop.run(modules=[self.net])


def test_a_stopped_and_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    whole = list(Run(tmp_path / "a.pt", Settings()).events())
    assert [e.step for e in whole] == [1, 2, 3, 4, 5, 6] and whole[0].stage == "toy"
    assert [e.checkpoint is not None for e in whole] == [False, False, False, True, False, True]
    assert whole[0].losses["half"] == pytest.approx(whole[0].losses["loss"] / 2)

    events = Run(tmp_path / "b.pt", Settings()).events()
    for _ in range(3):
        next(events)
    events.close()  # Stop: saved at step 3, between two cadence points
    saved = load_checkpoint(tmp_path / "b.pt", "toy")
    assert saved["step"] == 3 and not saved["complete"] and saved["elapsed"] > 0
    resumed = Run(tmp_path / "b.pt", Settings(), resume=True)
    rest = list(resumed.events())
    assert [e.step for e in rest] == [4, 5, 6]
    assert rest[-1].losses == whole[-1].losses
    a, b = load_checkpoint(tmp_path / "a.pt"), load_checkpoint(tmp_path / "b.pt")
    assert all(torch.equal(a["net"][k], b["net"][k]) for k in a["net"]) and b["complete"]
    assert b["optimizer"]["param_groups"][0]["lr"] == a["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.1 / 6)
    with pytest.raises(InputError, match="exists"):
        Run(tmp_path / "a.pt", Settings())  # never replaced without resume


def test_resumed_runs_take_their_run_settings_from_the_caller_and_the_rest_from_the_checkpoint(tmp_path):
    list(Run(tmp_path / "a.pt", Settings(steps=2)).events())
    longer = Run(tmp_path / "a.pt", Settings(steps=5, lr=0.5), resume=True)
    assert longer.start.config.steps == 5 and longer.start.config.lr == 0.1
    assert [e.step for e in longer.events()] == [3, 4, 5]


def test_hooks_run_at_their_cadence_in_evaluation_mode_and_milestones_are_saved(tmp_path):
    seen = []

    def preview(out):
        seen.append((out.context, run.net.training))
        return {"case": out.context}

    hooks = [Hook(2, preview, "preview"), Hook(0, lambda out: {"never": 1.0}), Hook(5, lambda out: {"dice": 0.5})]
    run = Run(tmp_path / "a.pt", Settings(), hooks=hooks, milestones=(1,))
    events = list(run.events())
    assert seen == [(1, False), (3, False), (5, False)]  # steps 2, 4, 6, modules in eval mode
    assert all(run.modes)  # and back in training mode for every step
    assert [e.preview for e in events] == [None, {"case": 1}, None, {"case": 3}, None, {"case": 5}]
    assert [e.metrics for e in events] == [{}, {}, {}, {}, {"dice": 0.5}, {"dice": 0.5}]
    assert [e.step for e in events if e.checkpoint is not None] == [1, 4, 6]


def test_a_diverged_step_stops_the_run_with_the_weights_before_it_saved(tmp_path):
    run = Run(tmp_path / "a.pt", Settings(), fail_at=4)
    with pytest.raises(InputError, match="toy training diverged at step 5"):
        list(run.events())
    saved = load_checkpoint(tmp_path / "a.pt")
    assert saved["step"] == 4  # the NaN step never reached the weights
