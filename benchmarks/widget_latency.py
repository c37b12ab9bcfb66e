"""Does training in the napari widget keep the GUI responsive, and does the worker slow training down?

Runs a short registration + co-training on the bundled sample twice after a short warm-up run: once in the
"One-shot training" dock widget of a real viewer, whose worker drives the engines while a 10 ms Qt timer on
the main thread measures the time between its ticks, then through the same engines directly (plain Python
loop, no GUI), alternating `--repeats` times. Throughput counts training steps only (the engines' own preparation excluded).
Needs an X server; on a headless machine:

    xvfb-run -a python benchmarks/widget_latency.py                   # defaults: 16 + 8 steps
    xvfb-run -a python benchmarks/widget_latency.py --registration-steps 40 --cotrain-steps 20

Targets (issue 6): main-thread tick interval p99 < 100 ms; worker throughput within 10% of direct calls.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def rates(times: dict[str, list[float]]) -> dict[str, float]:
    """Steps per second of each training stage, from the arrival times of its events (first to last)."""
    return {stage: (len(t) - 1) / (t[-1] - t[0]) for stage, t in times.items() if len(t) > 1}


def settings(args) -> tuple[dict, dict]:
    reg = dict(steps=args.registration_steps, device="cpu", preview_every=args.preview_every,
               checkpoint_every=10**6)
    cot = dict(steps=args.cotrain_steps, slab=args.slab, image_size=args.image_size, device="cpu",
               preview_every=args.preview_every, checkpoint_every=10**6, validate_every=0)
    return reg, cot


def direct(args, out: Path) -> dict[str, float]:
    """The engines driven by a plain loop, as the CLI does (no Qt)."""
    from napari_rrl_medsam import api

    task = api.sample_task(check=False)
    atlas, labels = task.atlas.load()
    unlabelled = [case.load()[0] for case in task.unlabelled]
    reg, cot = settings(args)
    encoder = api.load_encoder()
    times: dict[str, list[float]] = {}
    for events in (lambda: api.registration_trainer(atlas=atlas, atlas_labels=labels, unlabelled=unlabelled,
                                                    encoder=encoder, out=out / "registration.pt", **reg),
                   lambda: api.cotrainer(atlas=atlas, atlas_labels=labels, unlabelled=unlabelled, encoder=encoder,
                                         registration=out / "registration.pt", out=out / "rrl_medsam.pt",
                                         validation=[], **cot)):
        for event in events():
            if event.losses:
                times.setdefault(event.stage, []).append(time.perf_counter())
    return rates(times)


def in_widget(args, out: Path) -> tuple[dict[str, float], np.ndarray]:
    """The same run in the dock widget of a real viewer; returns its rates and the timer tick intervals (ms)."""
    import napari
    from qtpy.QtCore import QEventLoop, Qt, QTimer

    viewer = napari.Viewer()
    viewer.open_sample("napari-rrl-medsam", "oneshot_brain")
    _, widget = viewer.window.add_plugin_dock_widget("napari-rrl-medsam", "One-shot training")
    f = widget.form
    f.atlas.value, f.atlas_labels.value = viewer.layers["atlas"], viewer.layers["atlas labels"]
    f.unlabelled.value = [viewer.layers["target01"], viewer.layers["target02"]]
    f.encoder.value, f.device.value, f.out.value = None, "cpu", str(out)
    reg, cot = settings(args)
    f.registration_steps.value, f.cotrain_steps.value = reg.pop("steps"), cot.pop("steps")
    f.slab.value, f.image_size.value = cot.pop("slab"), cot.pop("image_size")
    widget.registration_settings = {k: v for k, v in reg.items() if k != "device"}
    widget.cotrain_settings = {k: v for k, v in cot.items() if k != "device"}
    times: dict[str, list[float]] = {}
    widget.shown.connect(lambda e: e.losses and times.setdefault(e.stage, []).append(time.perf_counter()))
    ticks: list[float] = []
    timer = QTimer()
    timer.setTimerType(Qt.TimerType.PreciseTimer)
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    shown: list[tuple[float, str, bool]] = []
    widget.shown.connect(lambda e: shown.append((time.perf_counter(), e.stage, e.preview is not None)))
    loop = QEventLoop()
    timer.start()
    t0 = time.perf_counter()
    worker = widget.start()
    print(f"widget.start() (reads the layers on the main thread): {1000 * (time.perf_counter() - t0):.0f} ms")
    worker.finished.connect(loop.quit)
    loop.exec()
    timer.stop()
    gaps = np.diff(ticks)
    for k in np.argsort(gaps)[-5:][::-1]:
        before = [s for s in shown if s[0] <= ticks[k + 1]]
        print(f"  stall {1000 * gaps[k]:.0f} ms at {ticks[k] - t0:.1f} s; last event {before[-1][1:] if before else None}")
    if widget.failed is not None:
        raise widget.failed
    viewer.close()
    return rates(times), np.diff(ticks) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--registration-steps", type=int, default=16)
    parser.add_argument("--cotrain-steps", type=int, default=8)
    parser.add_argument("--slab", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--preview-every", type=int, default=4, help="live layer updates (every n steps)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating widget / direct runs")
    args = parser.parse_args()
    os.environ.setdefault("RRL_MEDSAM_CONFIG_DIR", tempfile.mkdtemp())  # leave the user's settings alone
    import torch

    print(f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs; registration {args.registration_steps} "
          f"steps, co-training {args.cotrain_steps} steps (slab {args.slab}, {args.image_size} px), live layers "
          f"every {args.preview_every} steps")
    plain: list[dict[str, float]] = []
    gui: list[dict[str, float]] = []
    intervals = []
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up (not measured): the first steps of a process are several times slower (allocator, oneDNN)
        warm = argparse.Namespace(**{**vars(args), "registration_steps": 3, "cotrain_steps": 3})
        direct(warm, Path(tmp) / "warm-up")
        for r in range(args.repeats):  # alternated: other jobs on a shared machine change the pace over time
            start = time.perf_counter()
            rate, ticks = in_widget(args, Path(tmp) / f"widget{r}")
            gui.append(rate)
            intervals.append(ticks)
            print(f"widget run {r + 1}: {time.perf_counter() - start:.0f} s, " + _rates(rate))
            start = time.perf_counter()
            plain.append(direct(args, Path(tmp) / f"direct{r}"))
            print(f"direct run {r + 1}: {time.perf_counter() - start:.0f} s, " + _rates(plain[-1]))
    intervals = np.concatenate(intervals)
    print(f"\nmain-thread timer (10 ms) while training in the worker: {len(intervals)} ticks, interval median "
          f"{statistics.median(intervals):.1f} ms, p99 {np.percentile(intervals, 99):.1f} ms, "
          f"max {intervals.max():.1f} ms")
    print(f"\n{'stage':<14} {'direct steps/s':>15} {'worker steps/s':>15} {'worker/direct':>14}   (mean of {args.repeats})")
    for stage in plain[0]:
        a, b = np.mean([p[stage] for p in plain]), np.mean([g.get(stage, np.nan) for g in gui])
        print(f"{stage:<14} {a:15.3f} {b:15.3f} {b / a:14.2f}")


def _rates(rate: dict[str, float]) -> str:
    return ", ".join(f"{stage} {value:.3f} steps/s" for stage, value in rate.items())


if __name__ == "__main__":
    main()
