"""RRL-MedSAM co-training: general and medical branches supervised by registration pseudo labels (and the
atlas's true labels), with mutual EMA between the two encoders after every optimiser step.

Pseudo labels are computed once at the start by the registration model (on the atlas's working grid).
Each step trains on a slab of `slab` consecutive axial slices of one pair: the atlas with its true labels
(probability `atlas_probability`), an exact synthetic pair (`synthetic_probability`: the atlas image and labels
warped by one sampled field, the image restyled after an unlabelled volume; `core/synthetic.py`), or else an
unlabelled volume with its pseudo labels (loss times `pseudo_weight`): general branch -> M_g (Dice + CE),
medical branch with M_g (detached: a prompt is an input, as in SAM) as dense mask prompt -> final mask
(Dice + CE), optionally a consistency term between the branches. Ablations: `use_dskd=False` (random E_g),
`use_mutual_ema=False`, `use_prompt=False`, `synthetic_probability=0`, `intensity_augment=False`. Events carry
previews: the current volume's pseudo labels and auto-prompt mask.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..augment import intensity_augmentation
from ..checkpoint import check_same_task, load_checkpoint, resume_state, save_checkpoint
from ..device import resolve_device
from ..errors import InputError
from ..models.encoder import EncoderConfig
from ..models.segmentation import SegmentationSpec, build_segmentation
from ..registration import REFINE_STEPS, intensities
from ..resample import resample
from ..segmentation import KIND, labels_to_square, predict_probabilities, shares_to_square, to_square
from ..synthetic import APPEARANCES, FIELD_MODES, SyntheticPairs
from ..task import check_atlas
from ..volume import Volume
from ..warp import label_shares
from .events import Progress, check_finite, due, initialised_settings, resumed_settings


@dataclass
class CotrainConfig(SegmentationSpec):
    """A segmentation model's spec (`SegmentationSpec`: decoders, slab, slice size) and how it is co-trained."""

    steps: int = 1500  # the recipe's (training/cotrain.json); the quick budget (api.QUICK) runs 600 at 96 px
    lr: float = 1e-2  # decoders: at 1e-3 they took hundreds of steps to predict any small structure
    encoder_lr: float = 5e-4
    lr_schedule: str = "poly"  # both rates times (1 - step / steps) ** 0.9 (nnU-Net's decay), or "constant"
    ema_alpha: float = 0.99
    use_mutual_ema: bool = True
    use_dskd: bool = True  # False: E_g (and so E_m) start from random weights
    atlas_probability: float = 0.25
    # exact synthetic pairs (0: none): share of steps; the rest after the atlas are (unlabelled, pseudo label)
    synthetic_probability: float = 0.0
    appearance: str = "fourier"  # of the synthetic image: "fourier" (IST amplitude), "style" (BRBS offset), "none"
    field_mode: str = "mix"  # synthetic fields: "mix" two volumes' velocities, or "scale" one
    synthetic_beta: float = 0.3  # Beta(b, b) of the field and style weights (BRBS)
    pseudo_weight: float = 1.0  # loss weight of the (unlabelled image, pseudo label) steps (IST: 0.1)
    intensity_augment: bool = False  # MONAI random bias field, contrast, histogram shift, blur, noise
    # train on each class's share of each working-grid voxel (the native atlas labels' partial volumes, warped:
    # `warp.label_shares`) instead of one nearest label; synthetic pairs and fused self-training labels stay nearest
    label_shares: bool = False
    consistency_weight: float = 0.0
    refine_steps: int = REFINE_STEPS  # instance optimisation when computing pseudo labels
    # with a `pseudo_model` (a co-trained model: a self-training round), the registration's share of the fused
    # pseudo labels, (1 - w) p_model + w [registration == k]; below 0.5, else the registration always wins
    pseudo_prior_weight: float = 0.3
    augment: bool = True
    checkpoint_every: int = 25
    preview_every: int = 25
    validate_every: int = 50  # validation Dice (working grid) every so many steps, when labelled volumes are given
    seed: int = 0
    device: str = "auto"

    @staticmethod
    def legacy() -> dict:
        return {
            **SegmentationSpec.legacy(),
            "lr_schedule": "constant",
            "synthetic_probability": 0.0,
            "pseudo_weight": 1.0,
            "intensity_augment": False,
            "label_shares": False,
        }


# the settings that shape the networks (or what they were trained to see): a fine-tuned run keeps its init's
ARCHITECTURE = ("decoder_width", "use_prompt", "prompt_residual", "use_dskd", "slab", "image_size", "norm_statistics")


def build_parts(config: CotrainConfig, encoder_config: EncoderConfig, n_classes: int, general_state=None):
    """The four parts with new weights drawn from `config.seed`; E_g from `general_state` (the distilled
    encoder) with DSKD, from random weights without."""
    import torch

    torch.manual_seed(config.seed)
    return build_segmentation(config, encoder_config, n_classes, general_state if config.use_dskd else None)


def validation_dice(parts: dict, validation, classes: np.ndarray, config: CotrainConfig, device) -> dict[str, float]:
    """Mean Dice of both branches over the structures of each labelled volume, on the working grid.
    `classes[i]` is the label value of class index i."""
    import torch

    from ..metrics import evaluate

    scores = {"val_dice": [], "val_dice_general": []}
    for image, truth in validation:
        probs = predict_probabilities(parts, image.to(device), config)
        for key, p in zip(("val_dice_general", "val_dice"), probs):
            scores[key].append(evaluate(classes[torch.argmax(p, 0).cpu().numpy()], truth, hd95=False).mean_dice)
    return {k: float(np.mean(v)) for k, v in scores.items()}


def _check_mix(config: CotrainConfig) -> None:
    """The training mix's settings, each a clear error."""
    share = config.atlas_probability + config.synthetic_probability
    if not (0 <= config.atlas_probability <= 1 and 0 <= config.synthetic_probability <= 1 and share <= 1 + 1e-9):
        raise InputError(
            f"atlas_probability ({config.atlas_probability}) and synthetic_probability "
            f"({config.synthetic_probability}) are shares of the steps: each in [0, 1], together <= 1."
        )
    if config.appearance not in APPEARANCES:
        raise InputError(f"appearance must be one of {', '.join(APPEARANCES)}, not {config.appearance!r}.")
    if config.field_mode not in FIELD_MODES:
        raise InputError(f"field_mode must be one of {', '.join(FIELD_MODES)}, not {config.field_mode!r}.")
    if config.pseudo_weight < 0 or config.synthetic_beta <= 0:
        raise InputError("pseudo_weight must be >= 0 and synthetic_beta > 0.")
    if not 0 <= config.pseudo_prior_weight < 0.5:
        raise InputError(
            f"pseudo_prior_weight must be in [0, 0.5), not {config.pseudo_prior_weight}: at 0.5 or "
            "more the registration's label always wins and the pseudo-label model changes nothing."
        )


def _check_pseudo_model(model, state: dict | None, checkpoint: Path, grid, classes: list[int]) -> str | None:
    """The pseudo-label model's source (recorded in the checkpoint), checked against this task and, when
    resuming, against the model the run started with (its pseudo labels must be the same)."""
    source = None if model is None else str(getattr(model, "source", "a co-trained model"))
    if model is not None:
        check_same_task(
            {"grid": {"shape": list(model.grid.shape), "affine": model.grid.affine.tolist()}, "classes": model.classes},
            source,
            grid,
            classes,
        )
    if state is not None and state.get("pseudo_model") != source:
        before = state.get("pseudo_model")
        raise InputError(
            f"{checkpoint} was trained on pseudo labels "
            f"{'fused with ' + before if before else 'of the registration alone'}; resume it with "
            f"{'pseudo_model=' + before if before else 'no pseudo-label model'} (now: "
            f"{source or 'none'})."
        )
    return source


def cotrain_engine(
    atlas: Volume,
    atlas_labels: Volume,
    unlabelled: Sequence[Volume],
    registration,
    checkpoint: str | Path,
    encoder=None,
    config: CotrainConfig | None = None,
    resume: bool = False,
    validation: Sequence[tuple[Volume, Volume]] = (),
    init: str | Path | None = None,
    pseudo_model=None,
) -> Iterator[Progress]:
    """Co-train both branches; `registration` is a `RegistrationModel`, `encoder` the distilled E_g;
    `validation`: labelled (image, labels) volumes whose Dice is reported in the events' metrics; `init`: a
    co-trained checkpoint to start from (fine-tuning: its weights and architecture, this run's training settings,
    a new optimiser; e.g. with a fine-tuned registration's pseudo labels); `pseudo_model`: a co-trained
    `SegmentationModel` whose predictions, fused with the registration's (`pseudo_prior_weight`), become the
    pseudo labels (a self-training round)."""
    import torch
    from monai.losses import DiceCELoss

    from ..models.segmentation import mutual_ema, slab_features

    config = copy.deepcopy(config) if config is not None else CotrainConfig()
    if config.lr_schedule not in ("constant", "poly"):
        raise InputError(f"lr_schedule must be 'constant' or 'poly', not {config.lr_schedule!r}.")
    if config.norm_statistics not in ("slab", "running"):
        raise InputError(f"norm_statistics must be 'slab' or 'running', not {config.norm_statistics!r}.")
    _check_mix(config)
    checkpoint = Path(checkpoint)
    atlas_labels = check_atlas(atlas, atlas_labels)
    if not unlabelled:
        raise InputError("co-training needs at least one unlabelled volume.")
    state = resume_state(checkpoint, KIND, resume)
    start = state  # the weights this run starts from: its own checkpoint, else `init`'s, else new ones
    if state is not None:
        config = CotrainConfig.from_dict(resumed_settings(state["config"], config))
    elif init is not None:
        start = load_checkpoint(init, KIND)
        config = CotrainConfig.from_dict(initialised_settings(start["config"], config, ARCHITECTURE))
    if encoder is None and config.use_dskd and start is None:
        raise InputError("co-training with DSKD needs the distilled general encoder (or use_dskd=False).")
    device = resolve_device(config.device)
    grid = registration.grid
    classes = [0] + [int(v) for v in np.unique(atlas_labels.array) if v != 0]
    lut = np.zeros(int(max(classes)) + 1, np.int64)
    lut[classes] = np.arange(len(classes))
    values = np.array(classes)  # class index -> label value
    if start is not None:
        check_same_task(start, checkpoint if state is not None else init, grid, classes)
    pseudo_source = _check_pseudo_model(pseudo_model, state, checkpoint, grid, classes)

    images, targets = [intensities(atlas, grid)[0, 0]], [torch.from_numpy(lut[resample(atlas_labels, grid).array])]
    shares = [torch.from_numpy(label_shares(atlas_labels, classes, grid)) if config.label_shares else None]
    for i, volume in enumerate(unlabelled):
        pseudo = registration.pseudo_labels(atlas, atlas_labels, volume, config.refine_steps)
        if pseudo_model is not None:
            pseudo = pseudo_model.working_labels(volume, pseudo, config.pseudo_prior_weight)
        images.append(intensities(volume, grid)[0, 0])
        targets.append(torch.from_numpy(lut[pseudo]))
        share = config.label_shares and pseudo_model is None
        shares.append(
            torch.from_numpy(registration.pseudo_labels(atlas, atlas_labels, volume, config.refine_steps, classes))
            if share
            else None
        )
        yield Progress(
            "pseudo labels",
            i + 1,
            len(unlabelled),
            message="pseudo labels (registration and model)" if pseudo_model else "registration pseudo labels",
            preview={"case": i, "target": images[-1].numpy(), "pseudo_labels": pseudo},
        )

    synthetic = None
    if config.synthetic_probability > 0:
        velocities = []
        for i, volume in enumerate(unlabelled):
            velocities.append(registration.velocity(atlas, volume))
            yield Progress("synthetic pairs", i + 1, len(unlabelled), message="registration fields")
        synthetic = SyntheticPairs(
            images[0].to(device),
            targets[0].to(device),
            [v.to(device) for v in velocities],
            [u.to(device) for u in images[1:]],
            registration.net.config.scaling_and_squaring_steps,
            config.appearance,
            config.field_mode,
            config.synthetic_beta,
        )
    augment = intensity_augmentation() if config.intensity_augment else None
    validation = [(intensities(image, grid)[0, 0], resample(labels, grid).array) for image, labels in validation]
    encoder_config = (
        EncoderConfig.from_dict(start["encoder_config"])
        if start is not None
        else encoder.config
        if encoder is not None
        else EncoderConfig()
    )
    parts = build_parts(config, encoder_config, len(classes), encoder.state_dict() if encoder is not None else None)
    if start is not None:
        for name, module in parts.items():
            module.load_state_dict(start["parts"][name])
    for module in parts.values():
        module.to(device).train()
    encoders = [p for n in ("general", "medical") for p in parts[n].parameters()]
    decoders = [p for n in ("decoder_g", "ap") for p in parts[n].parameters()]
    optimiser = torch.optim.AdamW(
        [{"params": encoders, "lr": config.encoder_lr}, {"params": decoders, "lr": config.lr}], weight_decay=1e-4
    )
    step = 0
    if state is not None:
        optimiser.load_state_dict(state["optimizer"])
        step = int(state["step"])
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    shares_loss = DiceCELoss(softmax=True)  # the targets are class shares already
    # slabs are drawn among the slices that hold some anatomy
    ranges = []
    for y in targets:
        z = np.nonzero(y.numpy().reshape(-1, y.shape[2]).any(0))[0]
        ranges.append((int(z.min()), int(z.max())) if z.size else (0, y.shape[2] - 1))
    saved_step = step if state is not None else -1
    elapsed = float(state.get("elapsed", 0.0)) if state is not None else 0.0  # seconds of training, all runs
    teacher = getattr(encoder, "teacher", {}) if encoder is not None else {}
    if start is not None:
        teacher = start["teacher"]
    origin = str(init) if state is None and init is not None else (state or {}).get("initialised_from")

    def save() -> Path:
        return save_checkpoint(
            {
                "kind": KIND,
                "version": 1,
                "step": step,
                "complete": step >= config.steps,
                "config": config.to_dict(),
                "encoder_config": encoder_config.to_dict(),
                "parts": {n: m.state_dict() for n, m in parts.items()},
                "optimizer": optimiser.state_dict(),
                "classes": classes,
                "teacher": teacher,
                "grid": {"shape": list(grid.shape), "affine": grid.affine.tolist()},
                "registration": registration.state,
                "elapsed": elapsed,
                "initialised_from": origin,
                "pseudo_model": pseudo_source,
            },
            checkpoint,
        )

    try:
        while step < config.steps:
            started = time.perf_counter()
            gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
            draw = float(torch.rand(1, generator=gen))
            kind = (
                "atlas"
                if draw < config.atlas_probability
                else "synthetic"
                if draw < config.atlas_probability + config.synthetic_probability
                else "pseudo"
            )
            i = 0 if kind == "atlas" else 1 + int(torch.randint(len(unlabelled), (1,), generator=gen))
            lo, hi = ranges[0 if kind == "synthetic" else i]  # a synthetic pair is the atlas, deformed
            start = lo + int(torch.randint(max(hi - lo - config.slab + 2, 1), (1,), generator=gen))
            start = min(start, images[i].shape[2] - config.slab) if images[i].shape[2] >= config.slab else 0
            if kind == "synthetic":
                x, y = (
                    t.movedim(2, 0)
                    for t in synthetic.sample(
                        np.random.default_rng([config.seed, step]), start, min(config.slab, images[0].shape[2])
                    )
                )
            else:
                x = images[i][:, :, start : start + config.slab].movedim(2, 0)  # (K, X, Y)
                y = targets[i][:, :, start : start + config.slab].movedim(2, 0)
            if config.augment:
                x = x.clamp(0, 1) ** float(torch.exp(torch.empty(1).uniform_(-0.3, 0.3, generator=gen)))
            if augment is not None:
                augment.set_random_state(seed=int(torch.randint(2**31 - 1, (1,), generator=gen)))
                x = augment(x[None])[0]
                x = x.as_tensor() if hasattr(x, "as_tensor") else x  # MONAI's MetaTensor -> a plain tensor
            xs = to_square(x, config.image_size).to(device)
            share = shares[i] if kind != "synthetic" else None
            if share is not None:  # (C, X, Y, Z) -> (1, C, K, S, S)
                y = share[..., start : start + config.slab].movedim(3, 1)
                ys, loss_fn_now = shares_to_square(y, config.image_size)[None].to(device), shares_loss
            else:
                ys, loss_fn_now = labels_to_square(y, config.image_size)[None, None].to(device), loss_fn
            logits_g = parts["decoder_g"](slab_features(parts["general"], xs))
            probs_g = torch.softmax(logits_g, 1)
            logits_m = parts["ap"](slab_features(parts["medical"], xs), probs_g.detach() if config.use_prompt else None)
            loss_g, loss_m = loss_fn_now(logits_g, ys), loss_fn_now(logits_m, ys)
            loss = (loss_g + loss_m) * (config.pseudo_weight if kind == "pseudo" else 1.0)
            losses = {"general": float(loss_g.detach()), "medical": float(loss_m.detach())}
            if config.consistency_weight > 0:
                cons = torch.mean((torch.softmax(logits_m, 1) - probs_g) ** 2)
                loss = loss + config.consistency_weight * cons
                losses["consistency"] = float(cons.detach())
            check_finite(loss, "co-training", step + 1)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if config.lr_schedule == "poly":
                decay = (1 - step / config.steps) ** 0.9
                for group, base in zip(optimiser.param_groups, (config.encoder_lr, config.lr)):
                    group["lr"] = base * decay
            optimiser.step()
            if config.use_mutual_ema:
                mutual_ema(parts["general"], parts["medical"], config.ema_alpha)
            step += 1
            elapsed += time.perf_counter() - started
            path = None
            if due(step, config.checkpoint_every, config.steps):
                path, saved_step = save(), step
            preview, metrics = None, {}
            show = config.preview_every and due(step, config.preview_every, config.steps)
            check = validation and config.validate_every and due(step, config.validate_every, config.steps)
            if show or check:
                for module in parts.values():
                    module.eval()  # predict as inference does (running batch-norm statistics untouched)
                if show:
                    probs = predict_probabilities(parts, images[i].to(device), config)
                    preview = {
                        "case": i,
                        "target": images[i].numpy(),
                        "pseudo_labels": values[targets[i].numpy()],
                        "auto_prompt": values[torch.argmax(probs[0], 0).cpu().numpy()],
                        "segmentation": values[torch.argmax(probs[1], 0).cpu().numpy()],
                    }
                if check:
                    metrics = validation_dice(parts, validation, values, config, device)
                for module in parts.values():
                    module.train()
            yield Progress(
                "co-training",
                step,
                config.steps,
                {"loss": float(loss.detach()), **losses},
                metrics,
                preview=preview,
                checkpoint=path,
            )
    finally:
        if step != saved_step:
            save()
