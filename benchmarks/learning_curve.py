"""Learning curve: the co-trained model and its registration with 1, 2, 3 and 5 labelled volumes, and the fully
supervised reference (issue 18).

On the OASIS-like one-shot split (27 eval structures, five validation volumes, native 1 mm grid): the one-shot run
(atlas synth01; the recipe: training/cotrain.json) is trained once, then CONTINUED each time labelled volumes are
added (`api.continue_training`, `api.CONTINUE` steps: fine-tuning both stages, as a user who corrects results
would), 1 -> 2 -> 3 -> 5. The added volumes are the first unlabelled training volumes (synth02, ...), whose label
files stand in for a user's corrections in this benchmark only; they leave the unlabelled set when labelled. Each
model is scored by segmenting the validation volumes, and its registration by registering every labelled volume
onto them and fusing the warped labels (locally weighted vote). The fully supervised reference co-trains anew on
the atlas and all ten training volumes with their true labels (no pseudo labels: atlas_probability 1), the recipe's
steps; `--anew N` co-trains anew (not continued) with N labelled volumes, the rest on the pseudo labels of the
curve's registration with N. Each stage is skipped when its folder holds its models (the script resumes); figures
go to `curve.json`.

    python benchmarks/learning_curve.py --data ../shared/data --out <work folder> [--counts 1 2 3 5] [--supervised]
        [--anew 5]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from napari_rrl_medsam import api
from napari_rrl_medsam.core.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def recipe() -> tuple[dict, dict]:
    """The recipe's registration and co-training settings (training/cotrain.json), validation off."""
    spec = json.loads((ROOT / "training" / "cotrain.json").read_text())
    return {**spec["registration_settings"]}, {**spec["settings"], "validate_every": 0}


def labelled_cases(task, n: int) -> list:
    """The first `n` - 1 unlabelled training volumes with their label files (the stand-in corrections)."""
    return [api.Case(c.id, c.image, c.image.parent.parent / "labels" / c.image.name) for c in task.unlabelled[: n - 1]]


def train(task, n: int, previous: Path | None, out: Path) -> dict:
    """The run with `n` labelled volumes in `out`: the one-shot recipe (n = 1) or `previous` continued."""
    done = (out / "rrl_medsam.pt").exists() and load_checkpoint(out / "rrl_medsam.pt")["complete"]
    start = time.perf_counter()
    if not done:
        registration, cotrain = recipe()
        common = dict(validation=False, compare=False, resume=out.exists())
        if previous is None:
            api.train_one_shot(task, out=out, registration=registration, cotrain=cotrain, **common)
        else:
            api.continue_training(previous, task, labelled=labelled_cases(task, n), out=out, **common)
    reg, model = load_checkpoint(out / "registration.pt"), load_checkpoint(out / "rrl_medsam.pt")
    return {
        "labelled": model["labelled"],
        "steps": [int(reg["step"]), int(model["step"])],
        "seconds of steps": [float(reg["elapsed"]), float(model["elapsed"])],
        "wall seconds": None if done else time.perf_counter() - start,
    }


def anew(task, n: int | None, registration: Path, out: Path) -> dict:
    """The recipe's co-training trained anew (not continued) with `n` labelled volumes and `registration`'s pseudo
    labels for the other training volumes; `n` None: the fully supervised reference (every training volume
    labelled, no pseudo labels: atlas_probability 1)."""
    path = out / "rrl_medsam.pt"
    start = time.perf_counter()
    if not (path.exists() and load_checkpoint(path)["complete"]):
        out.mkdir(parents=True, exist_ok=True)
        _, cotrain = recipe()
        k = len(task.unlabelled) + 1 if n is None else n
        unlabelled = [c.image for c in task.unlabelled[k - 1 :]]
        api.cotrain(
            atlas=task.atlas, unlabelled=unlabelled, labelled=labelled_cases(task, k), registration=registration,
            out=path, resume=path.exists(), validation=False,
            config={**cotrain, **({"atlas_probability": 1.0} if n is None else {})},
        )  # fmt: skip
    state = load_checkpoint(path)
    return {"labelled": state["labelled"], "steps": [0, int(state["step"])], "seconds of steps":
            [0.0, float(state["elapsed"])], "wall seconds": time.perf_counter() - start}  # fmt: skip


def scores(task, run: Path, n: int | None) -> dict:
    """Mean Dice per validation volume of the model, (n labelled volumes) of its fused registration and of the model
    with that fused registration as its prior (`segment(atlas=, labelled=)`, weight 0.3)."""
    model = api.load_model(run / "rrl_medsam.pt")
    atlases = [task.atlas, *labelled_cases(task, n)] if n else []
    out: dict[str, dict] = {"model": {}, "registration": {}, "model + prior": {}}

    def dice(labels, truth) -> float:
        return api.evaluate(labels, truth, task.eval_labels, False).mean_dice

    for case in task.evaluation:
        image, truth = case.load()
        t = time.perf_counter()
        out["model"][case.id] = dice(api.segment(model, image, auto_prompt=False).labels, truth)
        seconds = time.perf_counter() - t
        line = f"  {case.id}: model {out['model'][case.id]:.3f} ({seconds:.0f} s)"
        if atlases:
            fused = api.segment(model, image, atlas=atlases[0], labelled=atlases[1:], auto_prompt=False)
            registration = fused.registration.labels if len(atlases) > 1 else fused.registration.warped_labels
            out["registration"][case.id] = dice(registration, truth)
            out["model + prior"][case.id] = dice(fused.labels, truth)
            line += f", registration ({n} fused) {out['registration'][case.id]:.3f}"
            line += f", model + that prior {out['model + prior'][case.id]:.3f}"
        print(line, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, required=True, help="work folder (models and curve.json; resumable)")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 3, 5])
    parser.add_argument("--supervised", action="store_true", help="also the fully supervised reference")
    parser.add_argument("--rescore", action="store_true", help="score the curve's trained runs again (new metrics)")
    parser.add_argument(
        "--anew", type=int, nargs="+", default=[], metavar="N",
        help="also co-train anew (not continued) with N labelled volumes, on the pseudo labels of the curve's "
        "registration with N",
    )  # fmt: skip
    parser.add_argument(
        "--variant",
        nargs=3,
        metavar=("NAME", "FROM", "TO"),
        help="instead: one more row NAME, the run with FROM labelled volumes continued to TO (e.g. after a change to "
        "the continuation), beside the curve's own",
    )
    args = parser.parse_args()
    task = api.load_task(args.data / "oasis_like" / "dataset.json", split="oneshot", check=False)
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "curve.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    if args.variant:
        name, start, n = args.variant[0], int(args.variant[1]), int(args.variant[2])
        run = args.out / f"labelled_{n}_{name}"
        print(f"{n} labelled volume(s), {name}: training", flush=True)
        results[f"{n} {name}"] = {**train(task, n, args.out / f"labelled_{start}", run), **scores(task, run, n)}
        results_path.write_text(json.dumps(results, indent=1))
        args.counts, args.supervised = [], False
    previous = None
    for n in args.counts:
        key, run = str(n), args.out / f"labelled_{n}"
        if key in results and args.rescore:
            print(f"{n} labelled volume(s): scoring again", flush=True)
            results[key].update(scores(task, run, n))
            results_path.write_text(json.dumps(results, indent=1))
        if key not in results:
            print(f"{n} labelled volume(s): training", flush=True)
            results[key] = {**train(task, n, previous, run), **scores(task, run, n)}
            results_path.write_text(json.dumps(results, indent=1))
        previous = run
    if args.supervised and "supervised" not in results:
        print("fully supervised reference: training", flush=True)
        run = args.out / "supervised"
        results["supervised"] = {**anew(task, None, args.out / "labelled_1" / "registration.pt", run),
                                 **scores(task, run, None)}  # fmt: skip
        results_path.write_text(json.dumps(results, indent=1))
    for n in args.anew:
        key, run = f"{n} anew", args.out / f"labelled_{n}_anew"
        if key not in results:
            print(f"{n} labelled volume(s), co-trained anew: training", flush=True)
            results[key] = {**anew(task, n, args.out / f"labelled_{n}" / "registration.pt", run),
                            **scores(task, run, n)}  # fmt: skip
            results_path.write_text(json.dumps(results, indent=1))
    ids = [c.id for c in task.evaluation]
    print(f"\n{'labelled':<10} {'what':<13} " + " ".join(f"{i:>7}" for i in ids) + f" {'mean':>7}  steps, s of steps")
    for key, r in results.items():
        for what in ("registration", "model", "model + prior"):
            if r.get(what):
                values = [r[what][i] for i in ids]
                cost = f"  {r['steps']}, {[round(s) for s in r['seconds of steps']]}" if what == "model" else ""
                print(
                    f"{key:<10} {what:<13} " + " ".join(f"{v:7.3f}" for v in values) + f" {np.mean(values):7.3f}{cost}"
                )


if __name__ == "__main__":
    main()
