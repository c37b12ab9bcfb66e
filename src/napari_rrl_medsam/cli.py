"""`rrl-medsam`: the command-line face. Thin: parses arguments, calls the api, prints."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from . import __version__


def _orientation(affine) -> str:
    import nibabel as nib

    return "".join(nib.aff2axcodes(affine))


def _geometry_row(name: str, volume) -> str:
    from .api import working_grid

    spacing = "x".join(f"{s:.2f}" for s in volume.spacing)
    work = "x".join(str(s) for s in working_grid(volume).shape)
    shape = "x".join(str(s) for s in volume.shape)
    return f"  {name:<12} {shape:<14} {spacing:<16} {_orientation(volume.affine):<5} {work}"


def cmd_info(args: argparse.Namespace) -> int:
    from .api import load_volume

    print(f"  {'volume':<12} {'shape':<14} {'spacing mm':<16} {'axes':<5} 2 mm working grid")
    for path in args.paths:
        volume = load_volume(path)
        print(_geometry_row(volume.name[:12], volume) + f"  ({volume.kind}, {volume.array.dtype})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .api import check_output, evaluate

    if args.csv:
        check_output(args.csv, args.overwrite, "CSV table")  # before the work
    report = evaluate(args.prediction, args.truth, labels=args.labels, hd95=not args.no_hd95)
    print(report.table())
    if args.csv:
        print(f"wrote {report.to_csv(args.csv, args.overwrite)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole one-shot pipeline on the bundled sample: shipped encoder -> registration -> co-training ->
    segmentation -> Dice report, with every output written as NIfTI on its volume's grid."""
    from .api import (
        PRIOR_WEIGHT,
        QUICK,
        check_output_folder,
        evaluate,
        load_volume,
        register,
        resample,
        sample_task,
        save_volume,
        segment,
        train_one_shot,
    )
    from .data.sample import held_back_labels

    start = time.perf_counter()
    task = sample_task()
    out = Path(args.out) if args.out else Path("rrl-medsam-demo") / time.strftime("run-%Y%m%d-%H%M%S")
    if out.exists() and out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise FileExistsError(f"{out} is not empty; choose another --out or pass --overwrite.")
    check_output_folder(out)
    print(f"napari-rrl-medsam {__version__} demo on the bundled one-shot brain phantom (synthetic, not real MRI)")
    print(task.summary() + f"; outputs in {out}/")
    atlas, atlas_labels = task.atlas.load()
    print(f"\nGeometry\n  {'volume':<12} {'shape':<14} {'spacing mm':<16} {'axes':<5} 2 mm working grid")
    print(_geometry_row(task.atlas.id, atlas))
    targets = []
    for case in task.unlabelled + task.evaluation:
        image, labels = case.load()
        truth = labels if labels is not None else load_volume(held_back_labels(case.id), kind="labels")
        targets.append((case, image, truth))
        print(_geometry_row(case.id, image))
    quick = {**QUICK["cotrain"], "steps": args.cotrain_steps, "image_size": args.image_size}
    quick.update({"slab": args.slab} if args.slab is not None else {})
    print(
        f"\n[1/2] training: the registration network, {args.registration_steps} steps (shipped general encoder's "
        f"features), then co-training (general + medical branches, mutual EMA, auto-prompt), {args.cotrain_steps} steps"
    )
    model = train_one_shot(  # the co-trained model: it holds the registration it was trained with
        task,
        out=out,
        resume=args.overwrite,
        registration={"steps": args.registration_steps, "device": args.device, "seed": args.seed},
        cotrain={**quick, "refine_steps": args.refine_steps, "device": args.device, "seed": args.seed},
        compare=False,  # the table below compares them on every target
    )
    print("[2/2] segmentation")
    rows = []
    for case, image, truth in targets:
        before = evaluate(resample(atlas_labels, image.grid), truth, task.eval_labels, hd95=False).mean_dice
        pseudo = register(model, (atlas, atlas_labels), image, args.refine_steps).warped_labels
        result, fused = segment(model, image), segment(model, image, prior=pseudo).labels
        scores = [evaluate(v, truth, task.eval_labels, hd95=False).mean_dice for v in (pseudo, result.labels, fused)]
        for volume, name in ((pseudo, "pseudo_labels"), (result.labels, "labels"), (result.auto_prompt, "auto_prompt")):
            save_volume(volume, out / f"{case.id}_{name}.nii.gz", overwrite=args.overwrite)
        role = "evaluation" if case in task.evaluation else "unlabelled (held-back labels, diagnostic only)"
        rows.append((case.id, before, *scores, role))
    print(f"\nMean Dice over {len(task.eval_labels)} structures on each target's native grid")
    print(f"  {'target':<10} {'no registration':>15} {'registration':>13} {'RRL-MedSAM':>11} {'+ prior':>8}  role")
    for name, before, reg, seg, fused, role in rows:
        print(f"  {name:<10} {before:15.3f} {reg:13.3f} {seg:11.3f} {fused:8.3f}  {role}")
    print(f"(+ prior: RRL-MedSAM with the registration's labels as a prior, segment(prior=...), weight {PRIOR_WEIGHT})")
    print(
        f"\nwrote pseudo labels, segmentations and auto-prompt masks (NIfTI, each target's grid) and the models "
        f"to {out}/\ndone in {time.perf_counter() - start:.0f} s"
    )
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from .api import distill, load_task

    volumes = list(args.volumes)
    if args.task:
        task = load_task(args.task, check=False)
        volumes += [case.image for case in task.unlabelled]
    natural = False if args.no_natural else args.natural
    settings = {
        k: v
        for k, v in {
            "natural_steps": args.natural_steps,
            "medical_steps": args.medical_steps,
            "batch_size": args.batch_size,
            "slices_per_volume": args.slices_per_volume,
            "device": args.device,
            "spacing": args.spacing,
        }.items()
        if v is not None
    }
    distill(
        volumes,
        natural=natural,
        teacher=args.teacher,
        teacher_checkpoint=args.sam_checkpoint,
        out=args.out,
        resume=args.resume,
        config=settings,
    )
    print(f"wrote {args.out}")
    return 0


def _few_shot_task(args: argparse.Namespace):
    """The task of `args.task` and `--labelled`'s further labelled volumes: ids of the task's volumes (moved into
    the task) or a labelled set's folder (returned, for the api's `labelled=`)."""
    from .api import load_task

    given = args.labelled or []
    folder = len(given) == 1 and Path(given[0]).is_dir()
    task = load_task(args.task, atlas=args.atlas, check=False, labelled=() if folder else given)
    return task, given[0] if folder else ()


def cmd_continue(args: argparse.Namespace) -> int:
    from .api import continue_training

    task, labelled = _few_shot_task(args)
    device = {"device": args.device} if args.device else {}
    registration = {**device, **({"steps": args.registration_steps} if args.registration_steps else {})}
    cotrain = {**device, **({"steps": args.cotrain_steps} if args.cotrain_steps else {})}
    continue_training(
        args.run, task, labelled=labelled, encoder=args.encoder, out=args.out, resume=args.resume,
        registration=registration, cotrain=cotrain,
    )  # fmt: skip
    print(f"wrote {Path(args.out) / 'registration.pt'} and {Path(args.out) / 'rrl_medsam.pt'}")
    return 0


COMPARED = {
    "dice_registration": "registration",
    "dice_model": "RRL-MedSAM",
    "dice_prior": "RRL-MedSAM + registration prior",
    "dice_propagated": "RRL-MedSAM + propagated atlases' prior",
}


def cmd_train(args: argparse.Namespace) -> int:
    from .api import QUICK, drive, run_propagated_atlases, train_one_shot

    task, labelled = _few_shot_task(args)
    out = Path(args.out)
    if not args.resume and any((out / name).exists() for name in ("registration.pt", "rrl_medsam.pt")):
        raise FileExistsError(f"{out} already holds a run: pass --resume to continue it, or choose another --out.")
    stages = {}
    for stage, steps in (("registration", args.registration_steps), ("cotrain", args.cotrain_steps)):
        stages[stage] = {**(QUICK[stage] if args.quick else {}), **({"device": args.device} if args.device else {})}
        stages[stage].update({"steps": steps} if steps else {})
    events = train_one_shot(
        task, labelled=labelled, encoder=args.encoder, out=out, resume=args.resume, compare=not args.no_compare,
        propagate=not args.no_propagate, events=True, **stages,
    )  # fmt: skip
    last = drive(events)
    propagated = run_propagated_atlases(out / "rrl_medsam.pt")
    print(f"wrote {out / 'registration.pt'} and {out / 'rrl_medsam.pt'}")
    if propagated:
        print(f"propagated atlases in {propagated}/ (segment --atlas-image ... --atlas-labels ... --labelled it)")
    if last is not None and last.stage == "evaluation":
        print(f"validation Dice on the native grid ({len(task.evaluation)} evaluation volume(s) of the task):")
        for key, name in COMPARED.items():
            if key in last.metrics:
                print(f"  {name:<40} {last.metrics[key]:.3f}")
    return 0


def cmd_train_registration(args: argparse.Namespace) -> int:
    from .api import train_registration

    settings = {
        k: v
        for k, v in {
            "steps": args.steps,
            "device": args.device,
            "spacing": args.spacing,
            "smooth_weight": args.smooth_weight,
            "checkpoint_every": args.checkpoint_every,
            "amp": args.amp,
        }.items()
        if v is not None
    }
    if args.no_features:
        settings["use_features"] = False
    task, labelled = _few_shot_task(args)
    train_registration(
        task, encoder=args.encoder, out=args.out, resume=args.resume, init=args.init, config=settings, labelled=labelled
    )
    print(f"wrote {args.out}")
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from .api import load_model, load_volume, plan_outputs, register, save_volume

    names = ("_pseudo_labels.nii.gz", "_warped_atlas.nii.gz", "_displacement_mm.nii.gz", "_jacobian.nii.gz")
    plan = plan_outputs(args.targets, args.out, names, args.overwrite)  # before any work: never half a set
    model = load_model(args.model, args.device or "auto")
    for path, outputs in zip(args.targets, plan):
        target = load_volume(path)
        start = time.perf_counter()
        result = register(model, (args.atlas_image, args.atlas_labels), target, refine_steps=args.refine_steps)
        seconds = time.perf_counter() - start
        volumes = (
            result.warped_labels,
            result.warped_image,
            result.displacement_magnitude(),
            result.jacobian_determinant(),
        )
        written = [save_volume(v, o, args.overwrite) for v, o in zip(volumes, outputs)]
        print(
            f"{target.name}: {seconds:.1f} s, folding {100 * result.folding:.2f}% -> "
            + ", ".join(p.name for p in written)
        )
    return 0


def cmd_cotrain(args: argparse.Namespace) -> int:
    from .api import cotrain

    settings = {
        k: v
        for k, v in {
            "steps": args.steps,
            "device": args.device,
            "slab": args.slab,
            "image_size": args.image_size,
            "views": args.views,
            "checkpoint_every": args.checkpoint_every,
            "amp": args.amp,
            "full_resolution": args.full_resolution or None,
            "mirror": args.mirror,
        }.items()
        if v is not None
    }
    for flag, key in (("no_ema", "use_mutual_ema"), ("no_prompt", "use_prompt"), ("no_dskd", "use_dskd")):
        if getattr(args, flag):
            settings[key] = False
    task, labelled = _few_shot_task(args)
    cotrain(
        task,
        labelled=labelled,
        registration=args.registration,
        encoder=args.encoder,
        out=args.out,
        resume=args.resume,
        init=args.init,
        pseudo_model=args.pseudo_model,
        config=settings,
    )
    print(f"wrote {args.out}")
    return 0


def cmd_propagate(args: argparse.Namespace) -> int:
    from .api import InputError, load_task, propagate_atlases

    if bool(args.task) == bool(args.inputs):
        raise InputError("give the unlabelled volumes either as files / folders or as --task, one of the two.")
    volumes = load_task(args.task, check=False) if args.task else args.inputs
    for name, segmented in propagate_atlases(args.model, volumes, args.out, args.overwrite):
        print(f"{name}: {'segmented' if segmented else 'kept (already in the folder)'}")
    print(f"wrote {args.out}: use it as 'segment --labelled {args.out}' with --atlas-image and --atlas-labels")
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    from .api import InputError, load_volume, mirror_pairs, segment_batch

    if (args.atlas_image is None) != (args.atlas_labels is None):
        raise InputError("a registration prior needs both --atlas-image and --atlas-labels (or neither).")
    if args.labelled and args.atlas_image is None:
        raise InputError("--labelled fuses into the registration prior: give --atlas-image and --atlas-labels too.")
    mirror = None if args.mirror is None else mirror_pairs(args.mirror)
    atlas = (
        None
        if args.atlas_image is None
        else (load_volume(args.atlas_image), load_volume(args.atlas_labels, kind="labels"))
    )
    batch = segment_batch(
        args.model, args.inputs, args.out, device=args.device or "auto", precision=args.precision,
        auto_prompt=args.auto_prompt,
        skip_existing=args.skip_existing, overwrite=args.overwrite, prior_weight=args.prior_weight, mirror=mirror,
        atlas=atlas, refine_steps=args.refine_steps, labelled=args.labelled or (),
    )  # fmt: skip
    for path, written, seconds in batch:
        done = (
            "skipped (its outputs exist)"
            if written is None
            else f"{seconds:.1f} s -> " + ", ".join(p.name for p in written)
        )
        print(f"{path.name}: {done}")
    return 0


LABELLED_HELP = (
    "further labelled volumes (few-shot): ids of the task's volumes whose label files then count as labels, "
    "or one labelled set's folder (images/ + labels/, as 'Add to labelled set' writes it)"
)

AMP_HELP = (
    "mixed precision: float16 on a CUDA GPU, bfloat16 on a CPU that computes it natively (AVX512-BF16 or AMX); "
    "float32 on other CPUs"
)


def build_parser() -> argparse.ArgumentParser:
    from .api import PRECISIONS, PRIOR_WEIGHT, QUICK, REFINE_STEPS

    parser = argparse.ArgumentParser(
        prog="rrl-medsam", description="One-shot 3D medical image segmentation guided by SAM (RRL-MedSAM)."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the one-shot pipeline on the bundled sample and report Dice")
    p.add_argument("--out", help="folder for the outputs (default: rrl-medsam-demo/run-<time>)")
    p.add_argument("--overwrite", action="store_true", help="reuse --out: resume its models, replace its files")
    quick = "the quick budget, api.QUICK: about 7 minutes on 2 CPU cores"
    p.add_argument(
        "--registration-steps",
        type=int,
        default=QUICK["registration"]["steps"],
        help=f"(default: %(default)s, {quick}; the recipe for real data trains 1000)",
    )
    p.add_argument(
        "--cotrain-steps",
        type=int,
        default=QUICK["cotrain"]["steps"],
        help=f"co-training steps at constant rates (default: %(default)s, {quick}: there the phantom's model beats "
        "its registration on the evaluation target; 200 are far too few)",
    )
    p.add_argument(
        "--refine-steps",
        type=int,
        default=REFINE_STEPS,
        help="instance optimisation steps per registered pair (default: %(default)s)",
    )
    p.add_argument("--slab", type=int, help="consecutive slices per step (default: CotrainConfig's)")
    p.add_argument(
        "--image-size",
        type=int,
        default=QUICK["cotrain"]["image_size"],
        help=f"encoder input per slice (default: %(default)s, {quick}; the phantom's 2 mm slices are 84 px across)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--seed", type=int, default=0, help="both trainings' seed (default: %(default)s): others show the spread"
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("distill", help="distil a SAM teacher into the lightweight general encoder (DSKD)")
    p.add_argument("volumes", nargs="*", help="unlabelled volumes for the medical stage")
    p.add_argument("--task", help="a dataset.json or task folder: its unlabelled volumes are used")
    p.add_argument("--natural", help="folder of photographs for stage 1 (default: scikit-image's photographs)")
    p.add_argument("--no-natural", action="store_true", help="skip the natural-image stage")
    p.add_argument("--teacher", default="auto", choices=["auto", "litemedsam", "sam_vit_b"])
    p.add_argument("--sam-checkpoint", help="SAM ViT-B checkpoint file (else downloaded, for --teacher sam_vit_b)")
    p.add_argument("--out", default="general_encoder.pt", help="checkpoint to write (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue from --out if it exists")
    p.add_argument("--natural-steps", type=int)
    p.add_argument("--medical-steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--slices-per-volume", type=int)
    p.add_argument("--spacing", type=float, help="working resolution in mm (default 2)")
    p.add_argument("--device", help="auto, cpu or cuda")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("train-registration", help="train the one-shot registration network")
    p.add_argument("task", help="dataset.json or task folder (atlas + unlabelled volumes)")
    p.add_argument("--atlas", help="the atlas's id in a task folder where several images have labels")
    p.add_argument("--encoder", help="distilled encoder checkpoint (default: the shipped general encoder)")
    p.add_argument("--out", default="registration.pt", help="checkpoint to write (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue from --out if it exists")
    p.add_argument("--steps", type=int)
    p.add_argument("--spacing", type=float, help="working resolution in mm (default 2)")
    p.add_argument("--smooth-weight", type=float)
    p.add_argument("--no-features", action="store_true", help="intensities only (ablation)")
    p.add_argument("--checkpoint-every", type=int, help="save the checkpoint every so many steps (default 50)")
    p.add_argument("--init", help="a trained registration checkpoint to fine-tune (a new run written to --out)")
    p.add_argument("--labelled", nargs="+", metavar="ID|FOLDER", help=LABELLED_HELP)
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, help=AMP_HELP + " (default: off)")
    p.set_defaults(func=cmd_train_registration)

    p = sub.add_parser("register", help="warp the atlas (and its labels) onto target volumes")
    p.add_argument("targets", nargs="+")
    p.add_argument("--model", required=True, help="registration checkpoint")
    p.add_argument("--atlas-image", required=True)
    p.add_argument("--atlas-labels", required=True)
    p.add_argument(
        "--out",
        required=True,
        help="folder for <target>_pseudo_labels / _warped_atlas / "
        "_displacement_mm / _jacobian .nii.gz (each on its target's grid)",
    )
    p.add_argument(
        "--refine-steps",
        type=int,
        default=REFINE_STEPS,
        help="instance optimisation steps per pair (0: network only; default: %(default)s)",
    )
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--device", help="auto, cpu or cuda")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("cotrain", help="co-train the two branches (RRL-MedSAM) on registration pseudo labels")
    p.add_argument("task", help="dataset.json or task folder (atlas + unlabelled volumes)")
    p.add_argument("--atlas", help="the atlas's id in a task folder where several images have labels")
    p.add_argument("--registration", required=True, help="trained registration checkpoint")
    p.add_argument("--encoder", help="distilled general encoder (default: the shipped one)")
    p.add_argument("--out", default="rrl_medsam.pt", help="checkpoint to write (default: %(default)s)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--steps", type=int)
    p.add_argument("--slab", type=int, help="consecutive slices per step")
    p.add_argument("--image-size", type=int, help="encoder input size per slice")
    p.add_argument(
        "--views",
        help="slice orientations, comma-separated: axial (default), coronal, sagittal; prediction averages them",
    )
    p.add_argument("--no-ema", action="store_true", help="ablation: no mutual EMA")
    p.add_argument("--no-prompt", action="store_true", help="ablation: no auto-prompt")
    p.add_argument("--no-dskd", action="store_true", help="ablation: random general encoder")
    p.add_argument(
        "--full-resolution",
        action="store_true",
        help="decoders add a correction computed at full slice resolution from the image "
        "(a little more accurate, each step about 1.4x slower on a CPU)",
    )
    p.add_argument(
        "--mirror",
        metavar="PAIRS",
        help="left-right mirroring of half the training slabs, left and right labels exchanged: 'freesurfer' "
        "(aseg labels) or left:right label pairs, e.g. 2:41,3:42",
    )
    p.add_argument("--checkpoint-every", type=int, help="save the checkpoint every so many steps (default 25)")
    p.add_argument("--init", help="a co-trained checkpoint to fine-tune, e.g. with a fine-tuned --registration")
    p.add_argument("--labelled", nargs="+", metavar="ID|FOLDER", help=LABELLED_HELP)
    p.add_argument(
        "--pseudo-model",
        help="a co-trained checkpoint whose predictions, fused with the registration's, "
        "are the pseudo labels (a self-training round; usually also --init)",
    )
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, help=AMP_HELP + " (default: on)")
    p.set_defaults(func=cmd_cotrain)

    p = sub.add_parser(
        "train", help="the one-shot pipeline's training: registration, co-training, propagated atlases, comparison"
    )
    p.add_argument("task", help="a dataset.json or task folder")
    p.add_argument("--atlas", help="the atlas's id in a task folder where several images have labels")
    p.add_argument("--labelled", nargs="+", metavar="ID|FOLDER", help=LABELLED_HELP)
    p.add_argument("--out", required=True, help="the run's folder: registration.pt, rrl_medsam.pt, propagated/")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--quick", action="store_true", help="the quick budget (api.QUICK), not the recipe")
    p.add_argument("--registration-steps", type=int, help="(default: the recipe's 1000, or the quick budget's)")
    p.add_argument("--cotrain-steps", type=int, help="(default: the recipe's 3300, or the quick budget's)")
    p.add_argument("--encoder", help="distilled general encoder (default: the shipped one)")
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument(
        "--no-propagate",
        action="store_true",
        help="one-shot runs: do not segment the unlabelled volumes into propagated/",
    )
    p.add_argument(
        "--no-compare", action="store_true", help="skip the closing comparison on the task's evaluation volumes"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("continue", help="continue a trained run with more labelled volumes (fine-tuning both stages)")
    p.add_argument("run", help="the trained run's folder (registration.pt and rrl_medsam.pt)")
    p.add_argument("task", help="the dataset.json or task folder it was trained on")
    p.add_argument("--atlas", help="the atlas's id in a task folder where several images have labels")
    p.add_argument("--labelled", nargs="+", metavar="ID|FOLDER", help=LABELLED_HELP)
    p.add_argument("--out", required=True, help="a new folder for the continued registration.pt and rrl_medsam.pt")
    p.add_argument("--resume", action="store_true", help="continue an interrupted continuation in --out")
    p.add_argument("--registration-steps", type=int, help="registration steps added (default 300)")
    p.add_argument("--cotrain-steps", type=int, help="co-training steps added (default 500)")
    p.add_argument("--encoder", help="distilled general encoder (default: the shipped one)")
    p.add_argument("--device", help="auto, cpu or cuda")
    p.set_defaults(func=cmd_continue)

    p = sub.add_parser("segment", help="segment volumes (files or folders) with a co-trained model")
    p.add_argument("inputs", nargs="+", help="volume files or folders of them")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, help="folder for <name>_labels.nii.gz (each on its input's grid)")
    p.add_argument("--auto-prompt", action="store_true", help="also write the auto-prompt mask")
    p.add_argument(
        "--skip-existing", action="store_true", help="leave out volumes whose outputs exist (a stopped batch resumes)"
    )
    p.add_argument("--atlas-image", help="with --atlas-labels: fuse the model's registration of the atlas as a prior")
    p.add_argument("--atlas-labels")
    p.add_argument(
        "--labelled",
        metavar="FOLDER",
        help="a labelled set's folder (or the folder 'propagate' writes): its volumes are registered too and all "
        "warped labels fused into the prior",
    )
    p.add_argument(
        "--prior-weight", type=float, default=PRIOR_WEIGHT, help="weight of that prior (default: %(default)s)"
    )
    p.add_argument(
        "--refine-steps",
        type=int,
        default=REFINE_STEPS,
        help="registration refinement steps for the prior (default: %(default)s)",
    )
    p.add_argument(
        "--mirror",
        metavar="PAIRS",
        help="test-time left-right mirroring for symmetric anatomy (twice "
        "the network's time): 'freesurfer' (aseg labels) or left:right label pairs, e.g. 2:41,3:42",
    )
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="the networks' arithmetic: auto (default) = bfloat16 where the GPU or CPU computes it natively "
        "(about 1.5x faster on such a CPU, the same Dice), else float32",
    )
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser(
        "propagate",
        help="propagated atlases: segment the unlabelled volumes with a co-trained model into a folder that "
        "'segment --labelled' fuses into its registration prior",
    )
    p.add_argument("inputs", nargs="*", help="unlabelled volume files or folders of them")
    p.add_argument("--task", help="or a dataset.json or task folder: its unlabelled volumes")
    p.add_argument("--model", required=True, help="the co-trained model")
    p.add_argument("--out", required=True, help="the folder (images/, labels/, propagated.json); a stopped run resumes")
    p.add_argument("--overwrite", action="store_true", help="segment again the volumes already in --out")
    p.set_defaults(func=cmd_propagate)

    p = sub.add_parser("info", help="print the geometry of volume files")
    p.add_argument("paths", nargs="+")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("evaluate", help="Dice and HD95 per structure of a prediction against the truth")
    p.add_argument("prediction")
    p.add_argument("truth")
    p.add_argument("--labels", type=int, nargs="+", help="structures to score (default: all in the truth)")
    p.add_argument("--no-hd95", action="store_true", help="skip HD95 (faster)")
    p.add_argument("--csv", help="also write the table to this CSV file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --csv file")
    p.set_defaults(func=cmd_evaluate)
    return parser


def _stop(signum, frame) -> None:
    """SIGTERM (a scheduler's or `kill`'s polite stop) ends a run as Ctrl-C does: checkpoint saved, then exit."""
    raise KeyboardInterrupt


@contextlib.contextmanager
def _rank_0_speaks():
    """Under torchrun, the other ranks' standard output goes nowhere (rank 0 prints; errors still show)."""
    if int(os.environ.get("RANK", "0")) == 0:
        yield
        return
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        yield


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .api import InputError

    previous = signal.signal(signal.SIGTERM, _stop) if threading.current_thread() is threading.main_thread() else None
    try:
        with _rank_0_speaks():
            return args.func(args)
    except (InputError, FileNotFoundError, FileExistsError) as exc:
        print(f"rrl-medsam {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except PermissionError as exc:  # a folder we may not list or write in
        print(
            f"rrl-medsam {args.command}: error: permission denied: {exc.filename}; choose a location you can "
            "read and write, or change its permissions.",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:  # the engines save their checkpoint on the way out
        print(f"\nrrl-medsam {args.command}: interrupted." + _resume_hint(args), file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _resume_hint(args: argparse.Namespace) -> str:
    """Where an interrupted command left its checkpoint and how to go on, for the commands that train."""
    if args.command in ("distill", "train-registration", "cotrain", "continue") and Path(args.out).exists():
        return f" The checkpoint {args.out} was saved; run the same command with --resume to continue."
    if args.command == "train" and Path(args.out).exists():
        return f" Its checkpoints in {args.out} were saved; run the same command with --resume to continue."
    if args.command == "demo" and args.out:
        return f" Its models in {args.out} were saved; run the same command with --overwrite to continue."
    return ""


if __name__ == "__main__":
    sys.exit(main())
