"""Interruptions: what a killed or stopped training leaves, and whether resuming it is exact.

    python benchmarks/interruptions.py [--work DIR]

On the bundled sample, for registration training and co-training (the CLI, as a user runs it, in a child
process): an uninterrupted reference run; a run killed with SIGKILL mid-training, then resumed; a run stopped
with SIGINT (Ctrl-C), then resumed; and a run killed with SIGKILL in the middle of writing a checkpoint. Prints,
for each, the exit code, the step its checkpoint holds, and the largest weight difference between the resumed
run's final checkpoint and the reference's (0 = exact).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from napari_rrl_medsam.core.checkpoint import load_checkpoint
from napari_rrl_medsam.data.sample import SAMPLE_DIR

# a child whose checkpoint writes pause (after the temporary file is written, before the rename) for a kill
SLOW_SAVE = """
import sys, time
from napari_rrl_medsam.core import files
replace = files.os.replace
def slow(src, dst):
    if str(dst).endswith(".pt"):
        print("SAVING", file=sys.stderr, flush=True)
        time.sleep(60)
    replace(src, dst)
files.os.replace = slow
from napari_rrl_medsam.cli import main
sys.exit(main(sys.argv[1:]))
"""
CLI = "from napari_rrl_medsam.cli import main; import sys; sys.exit(main(sys.argv[1:]))"


def command(kind: str, out: Path, steps: int, registration: Path | None) -> list[str]:
    """The CLI arguments of a small run of `kind` ("registration" or "cotrain") writing `out`."""
    if kind == "registration":
        return [
            "train-registration",
            str(SAMPLE_DIR),
            "--steps",
            str(steps),
            "--checkpoint-every",
            "4",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    return [
        "cotrain",
        str(SAMPLE_DIR),
        "--registration",
        str(registration),
        "--steps",
        str(steps),
        "--checkpoint-every",
        "4",
        "--image-size",
        "64",
        "--slab",
        "4",
        "--out",
        str(out),
        "--device",
        "cpu",
    ]


def weights(path: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(path)
    tree = state["network"] if "network" in state else state["parts"]
    flat = {}
    for name, value in tree.items():
        for key, tensor in value.items() if isinstance(value, dict) else [(None, value)]:
            flat[f"{name}.{key}" if key else name] = tensor.float()
    return flat


def difference(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def run_until(args: list[str], signal_number: int, marker: str, count: int, code: str = CLI) -> int:
    """Start the CLI in a child, send `signal_number` once its stderr has shown `marker` `count` times; its exit
    code."""
    child = subprocess.Popen(
        [sys.executable, "-c", code, *args], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, bufsize=1
    )
    seen, buffer = 0, ""
    while seen < count:
        char = child.stderr.read(1)
        if not char:
            break
        buffer += char
        if buffer.endswith(marker):
            seen, buffer = seen + 1, ""
    child.send_signal(signal_number)
    child.communicate(timeout=120)
    return child.returncode


def resume(args: list[str]) -> int:
    return subprocess.run([sys.executable, "-c", CLI, *args, "--resume"], capture_output=True).returncode


def trial(kind: str, work: Path, steps: int, registration: Path | None) -> list[str]:
    rows = []
    reference = work / f"{kind}_reference.pt"
    subprocess.run(
        [sys.executable, "-c", CLI, *command(kind, reference, steps, registration)], check=True, capture_output=True
    )
    # the progress bar redraws "| n/steps" at each step: the marker of a step being done
    for name, sig, marker, count, code in (
        ("SIGKILL mid-training", signal.SIGKILL, f"/{steps} [", 7, CLI),
        ("SIGINT (Ctrl-C) mid-training", signal.SIGINT, f"/{steps} [", 7, CLI),
        ("SIGKILL mid-save", signal.SIGKILL, "SAVING", 2, SLOW_SAVE),
    ):
        out = work / f"{kind}_{name.split()[0].lower()}_{name.split()[-1]}.pt"
        exit_code = run_until(command(kind, out, steps, registration), sig, marker, count, code)
        leftovers = sorted(p.name for p in work.glob(f".{out.name}.*"))
        held = load_checkpoint(out)["step"]
        resumed = resume(command(kind, out, steps, registration))
        diff = difference(out, reference)
        rows.append(
            f"| {kind} | {name} | {exit_code} | step {held} | {'yes' if leftovers else 'no'} | "
            f"{resumed} | {load_checkpoint(out)['step']} | {diff:.1e} |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", help="folder for the runs (default: a temporary one)")
    parser.add_argument("--steps", type=int, default=16)
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="rrl-interruptions-"))
    work.mkdir(parents=True, exist_ok=True)
    print(
        "| run | interruption | exit code | checkpoint holds | temporary left | resume exit | resumed to | "
        "max weight difference vs uninterrupted |\n|---|---|---|---|---|---|---|---|",
        flush=True,
    )
    trial("registration", work, args.steps, None)
    trial("cotrain", work, args.steps, work / "registration_reference.pt")
    print(f"(runs in {work})")


if __name__ == "__main__":
    main()
