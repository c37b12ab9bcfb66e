"""RRL-MedSAM co-training: general and medical branches supervised by registration pseudo labels (and the
atlas's true labels), with mutual EMA between the two encoders after every optimiser step.

Pseudo labels are computed once at the start by the registration model (on the atlas's working grid).
Each step trains on a slab of `slab` consecutive slices (axial, or across an axis drawn from `views`) of one pair:
the atlas with its true labels (probability `atlas_probability`), an exact synthetic pair (`synthetic_probability`:
the atlas image and labels warped by one sampled field, the image restyled after an unlabelled volume;
`core/synthetic.py`), or else an unlabelled volume with its pseudo labels (loss times `pseudo_weight`); with
`mirror`, half the slabs are flipped left-right, left and right labels exchanged. General branch -> M_g (Dice +
CE), medical branch with M_g (detached: a prompt is an input, as in SAM) as dense mask prompt -> final mask (Dice +
CE), optionally a consistency term between the branches. Ablations: `use_dskd=False` (random E_g),
`use_mutual_ema=False`, `use_prompt=False`, `synthetic_probability=0`, `intensity_augment=False`.
Events carry previews: the current volume's pseudo labels and auto-prompt mask.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..augment import intensity_augmentation, random_gamma, structure_contrast
from ..checkpoint import check_same_task
from ..configs import APPEARANCES, FIELD_MODES, VIEW_AXES, CotrainConfig, EncoderConfig, mirror_pairs, view_axes
from ..device import training_dtype
from ..errors import InputError
from ..models.segmentation import build_segmentation, mutual_ema
from ..registration import intensities
from ..resample import foreground, resample
from ..segmentation import (
    KIND,
    labels_to_square,
    left_right_axis,
    mirror_index,
    predict_probabilities,
    shares_to_square,
    to_square,
)
from ..synthetic import SyntheticPairs
from ..task import label_indices, labelled_volumes
from ..volume import Volume
from ..warp import label_shares
from .distributed import SINGLE, Process, gather, join
from .events import Progress
from .loop import Hook, Loop, StepOutput, starting_point

# the settings that shape the networks (or what they were trained to see): a fine-tuned run keeps its init's
ARCHITECTURE = (
    "decoder_width", "use_prompt", "prompt_residual", "full_resolution", "use_dskd", "slab", "image_size",
    "norm_statistics", "views",
)  # fmt: skip


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
        inside = foreground(image.numpy())  # as inference labels nothing outside the anatomy
        for key, p in zip(("val_dice_general", "val_dice"), probs):
            labels = np.where(inside, classes[torch.argmax(p, 0).cpu().numpy()], 0)
            scores[key].append(evaluate(labels, truth, hd95=False).mean_dice)
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
            {"grid": model.grid.to_dict(), "classes": model.classes},
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


def _check_config(config: CotrainConfig) -> None:
    """Settings that are not one of their choices, each a clear error."""
    if config.lr_schedule not in ("constant", "poly"):
        raise InputError(f"lr_schedule must be 'constant' or 'poly', not {config.lr_schedule!r}.")
    if config.norm_statistics not in ("slab", "running"):
        raise InputError(f"norm_statistics must be 'slab' or 'running', not {config.norm_statistics!r}.")
    _check_mix(config)


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
    labelled: Sequence[tuple[Volume, Volume]] = (),
    proceed: bool = False,
) -> Iterator[Progress]:
    """Co-train both branches, yielding `Progress` events; writes `checkpoint` (also on stop).

    Args:
        atlas, atlas_labels: the labelled volume.
        unlabelled: the unlabelled volumes.
        registration: the trained `RegistrationModel` that makes the pseudo labels.
        checkpoint: the run's checkpoint file.
        encoder: the distilled general encoder E_g starts from (with `use_dskd`).
        config: the settings (default: the recipe).
        resume: continue `checkpoint`.
        validation: labelled (image, labels) volumes whose Dice is reported in the events' metrics.
        init: a co-trained checkpoint to start from (fine-tuning: its weights and architecture, this run's training
            settings, a new optimiser; e.g. with a fine-tuned registration's pseudo labels).
        pseudo_model: a co-trained `SegmentationModel` whose predictions, fused with the registration's
            (`pseudo_prior_weight`), become the pseudo labels (a self-training round).
        labelled: further labelled (image, labels) volumes: trained on with their true labels like the atlas, each
            a source of synthetic pairs, and registered onto every unlabelled volume with the atlas, their warped
            labels fused (locally weighted vote) into its pseudo labels. Label sets must be the atlas's.
        proceed: with `init`, continue its step count (`config.steps` more steps) instead of starting at 0.
    """

    _check_config(config := config or CotrainConfig())
    atlases = labelled_volumes(atlas, atlas_labels, labelled)
    if not unlabelled and config.atlas_probability < 1:
        raise InputError(
            "co-training needs at least one unlabelled volume (or atlas_probability=1: the labelled volumes "
            "alone, fully supervised)."
        )
    start = starting_point(checkpoint, KIND, resume, config, init, ARCHITECTURE, proceed)
    config = start.config
    if encoder is None and config.use_dskd and start.weights is None:
        raise InputError("co-training with DSKD needs the distilled general encoder (or use_dskd=False).")
    (process, device), grid = join(config.device), registration.grid
    classes = [0] + [int(v) for v in np.unique(atlases[0][1].array) if v != 0]
    if start.weights is not None:
        check_same_task(start.weights, checkpoint if start.state is not None else init, grid, classes)
    pseudo_source = _check_pseudo_model(pseudo_model, start.state, checkpoint, grid, classes)
    data = yield from _training_data(atlases, unlabelled, registration, pseudo_model, config, classes, process)
    data.synthetic = yield from _synthetic_pairs(atlases, unlabelled, registration, data, config, device, process)
    registration.forget_features()  # the training steps need none: free them (memory, GPU memory) while they run
    validation = [(intensities(image, grid)[0, 0], resample(labels, grid).array) for image, labels in validation]
    parts, encoder_config = _parts(config, start, encoder, len(classes), device)
    teacher = start.weights["teacher"] if start.weights is not None else getattr(encoder, "teacher", {}) or {}
    task = {"encoder_config": encoder_config.to_dict(), "classes": classes, "teacher": teacher,
            "grid": grid.to_dict(), "registration": registration.state, "pseudo_model": pseudo_source,
            "labelled": [image.name for image, _ in atlases]}  # fmt: skip
    pairs = mirror_pairs(config.mirror)
    mirror = (left_right_axis(grid), mirror_index(pairs, classes)) if pairs else None
    step = _CotrainStep(parts, data, config, device, task, process.rank, mirror)
    hooks = [
        Hook(config.preview_every, step.preview, "preview"),
        Hook(config.validate_every if validation else 0, lambda _: step.validate(validation)),
    ]
    loop = Loop("co-training", "co-training", config, step, _optimiser(parts, config), checkpoint, KIND, start,
                step.contents, hooks=hooks, rates=_poly_rates(config), after_step=step.exchange,
                autocast=training_dtype(device, config.amp))  # fmt: skip
    yield from loop.run(modules=list(parts.values()))


@dataclass
class _Data:
    """The training volumes on the working grid: `images[:n_labelled]` the labelled ones (the atlas first), then
    the unlabelled ones; `targets` their class-index maps (true, then pseudo labels); `shares` class shares
    (`label_shares`) or None; `ranges` the slices with anatomy; `values` class index -> label value; `synthetic`
    one exact pair generator per labelled volume, or None."""

    images: list
    targets: list
    shares: list
    ranges: list
    values: np.ndarray
    n_labelled: int = 1
    synthetic: list[SyntheticPairs] | None = None


def _training_data(atlases, unlabelled, registration, pseudo_model, config, classes, process: Process = SINGLE):
    """`_Data` from the registration's pseudo labels (several labelled volumes: fused; then fused with
    `pseudo_model`'s), an event per volume; with several processes each computes its share and all get all."""
    import torch

    grid = registration.grid
    images = [intensities(image, grid)[0, 0] for image in [*(image for image, _ in atlases), *unlabelled]]
    targets = [torch.from_numpy(label_indices(resample(lab, grid).array, classes)) for _, lab in atlases]
    shares = [torch.from_numpy(label_shares(lab, classes, grid)) if config.label_shares else None for _, lab in atlases]
    (atlas, atlas_labels), n = atlases[0], len(atlases)
    share = config.label_shares and pseudo_model is None and n == 1  # fused labels are one per voxel
    mine = {}
    for i, volume in enumerate(unlabelled):
        if not process.owns(i):
            continue
        pseudo = registration.fused_pseudo_labels(atlases, volume, config.refine_steps)  # one: its warped labels
        if pseudo_model is not None:
            pseudo = pseudo_model.working_labels(volume, pseudo, config.pseudo_prior_weight)
        soft = registration.pseudo_labels(atlas, atlas_labels, volume, config.refine_steps, classes) if share else None
        mine[i] = (pseudo, soft)
        yield Progress(
            "pseudo labels",
            i + 1,
            len(unlabelled),
            message="pseudo labels (registration and model)" if pseudo_model else "registration pseudo labels",
            preview={"case": i, "target": images[n + i].numpy(), "pseudo_labels": pseudo},
        )
    for pseudo, soft in gather(mine, len(unlabelled), process):
        targets.append(torch.from_numpy(label_indices(pseudo, classes)))
        shares.append(torch.from_numpy(soft) if soft is not None else None)
    ranges = [anatomy_ranges(y.numpy()) for y in targets]  # slabs are drawn among the slices with anatomy
    return _Data(images, targets, shares, ranges, np.array(classes), len(atlases))


def anatomy_ranges(target: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Per voxel axis of a (X, Y, Z) class-index map, the first and last slice across it that hold a structure
    (the whole axis when none does)."""
    ranges = []
    for axis, n in enumerate(target.shape):
        held = np.nonzero(np.moveaxis(target, axis, 0).reshape(n, -1).any(1))[0]
        ranges.append((int(held.min()), int(held.max())) if held.size else (0, n - 1))
    return tuple(ranges)


def _synthetic_pairs(atlases, unlabelled, registration, data: _Data, config: CotrainConfig, device, process=SINGLE):
    """One exact synthetic pair generator per labelled volume (None when `synthetic_probability` is 0), from its
    fields onto every unlabelled volume; an event per field (each process computes its share of them)."""
    if config.synthetic_probability <= 0:
        return None
    n, m = data.n_labelled, len(unlabelled)
    mine = {}
    for k in (k for k in range(n * m) if process.owns(k)):
        mine[k] = registration.velocity(atlases[k // m][0], unlabelled[k % m]).cpu()
        yield Progress("synthetic pairs", k + 1, n * m, message="registration fields")
    velocities = gather(mine, n * m, process)
    return [
        SyntheticPairs(
            data.images[k].to(device),
            data.targets[k].to(device),
            [v.to(device) for v in velocities[k * m : (k + 1) * m]],
            [u.to(device) for u in data.images[n:]],
            registration.net.config.scaling_and_squaring_steps,
            config.appearance,
            config.field_mode,
            config.synthetic_beta,
        )
        for k in range(n)
    ]


def _parts(config: CotrainConfig, start, encoder, n_classes: int, device):
    """The four parts on `device` in training mode (the start's weights, else new ones) and the encoders' config."""
    if start.weights is not None:
        encoder_config = EncoderConfig.from_dict(start.weights["encoder_config"])
    else:
        encoder_config = encoder.config if encoder is not None else EncoderConfig()
    general = encoder.state_dict() if encoder is not None and start.weights is None else None  # else the start's
    parts = build_parts(config, encoder_config, n_classes, general)
    for name, module in parts.items():
        if start.weights is not None:
            module.load_state_dict(start.weights["parts"][name])
        module.to(device).train()
    return parts, encoder_config


def _optimiser(parts: dict, config: CotrainConfig):
    """AdamW: the encoders at `encoder_lr`, the decoders at `lr` (in that group order)."""
    import torch

    encoders = [p for n in ("general", "medical") for p in parts[n].parameters()]
    decoders = [p for n in ("decoder_g", "ap") for p in parts[n].parameters()]
    groups = [{"params": encoders, "lr": config.encoder_lr}, {"params": decoders, "lr": config.lr}]
    return torch.optim.AdamW(groups, weight_decay=1e-4)


def _poly_rates(config: CotrainConfig):
    """Both rates times (1 - step / steps) ** 0.9 (nnU-Net's decay); None with constant rates. A continued model's
    added steps carry on its decay over the whole count (a schedule of their own, from the full rates, measured
    worse: docs/benchmarks.md, "Learning curve")."""
    if config.lr_schedule != "poly":
        return None

    def rates(step: int) -> tuple[float, float]:
        decay = (1 - step / config.steps) ** 0.9
        return config.encoder_lr * decay, config.lr * decay

    return rates


class _CotrainStep:
    """One step on a slab of one pair (the atlas, an exact synthetic pair or an unlabelled volume with its pseudo
    labels): both branches' Dice + CE, the medical branch prompted by the general one's mask; and its preview."""

    def __init__(
        self, parts: dict, data: _Data, config: CotrainConfig, device, task: dict, rank: int = 0, mirror=None
    ) -> None:
        """`mirror`: None, or (the working grid's left-right voxel axis, class index -> its mirror's:
        `mirror_index`) to flip half the slabs left-right (`config.mirror`)."""
        import torch
        from monai.losses import DiceCELoss

        self.parts, self.data, self.config, self.device, self.rank = parts, data, config, device, rank
        self.mirror = None if mirror is None else (mirror[0], torch.as_tensor(mirror[1], dtype=torch.long))
        self.task = task  # the checkpoint's entries that do not change
        self.labels_loss = DiceCELoss(to_onehot_y=True, softmax=True)
        self.shares_loss = DiceCELoss(softmax=True)  # the targets are class shares already
        self.augment = intensity_augmentation() if config.intensity_augment else None
        self.axes = view_axes(config.views)

    def _kind(self, gen) -> tuple[str, int]:
        """What this step trains on: ("atlas" | "synthetic" | "pseudo", the volume's index in `data.images`: a
        labelled volume's for "atlas" and "synthetic" (the one deformed), an unlabelled one's for "pseudo")."""
        import torch

        c, n = self.config, self.data.n_labelled
        draw = float(torch.rand(1, generator=gen))
        synthetic = c.atlas_probability + c.synthetic_probability
        kind = "atlas" if draw < c.atlas_probability else "synthetic" if draw < synthetic else "pseudo"
        if kind == "pseudo":
            return kind, n + int(torch.randint(len(self.data.images) - n, (1,), generator=gen))
        return kind, int(torch.randint(n, (1,), generator=gen)) if n > 1 else 0

    def _view(self, kind: str, gen) -> int:
        """The voxel axis this step's slab runs along: one of the views, drawn when there are several (synthetic
        pairs are axial slabs: `SyntheticPairs.sample`)."""
        import torch

        if kind == "synthetic":
            return VIEW_AXES["axial"]
        if len(self.axes) == 1:
            return self.axes[0]
        return self.axes[int(torch.randint(len(self.axes), (1,), generator=gen))]

    def _slab(self, index: int, gen):
        """(kind, volume index, the view's voxel axis, (K, P, Q) image slab, its target: (K, P, Q) class indices or
        (C, K, P, Q) shares): K slices across the view's axis."""
        import torch

        kind, i = self._kind(gen)
        axis = self._view(kind, gen)
        d, slab, n = self.data, self.config.slab, self.data.images[i].shape[axis]
        lo, hi = d.ranges[i][axis]  # a synthetic pair is labelled volume i, deformed
        start = lo + int(torch.randint(max(hi - lo - slab + 2, 1), (1,), generator=gen))
        start = min(start, n - slab) if n >= slab else 0
        if kind == "synthetic":
            rng = np.random.default_rng(
                [self.config.seed, index, self.rank] if self.rank else [self.config.seed, index]
            )
            x, y = (t.movedim(2, 0) for t in d.synthetic[i].sample(rng, start, min(slab, n)))
            return kind, i, axis, x, y
        x = d.images[i].movedim(axis, 0)[start : start + slab]
        share = d.shares[i]
        if share is not None:
            return kind, i, axis, x, share.movedim(axis + 1, 1)[:, start : start + slab]
        return kind, i, axis, x, d.targets[i].movedim(axis, 0)[start : start + slab]

    def _mirrored(self, x, y, axis: int, gen):
        """The slab and its target flipped left-right with probability 1/2 (with `mirror`), left and right classes
        exchanged: the mirror image of the volume, a plausible other subject with exact labels."""
        import torch

        if self.mirror is None or float(torch.rand(1, generator=gen)) >= 0.5:
            return x, y
        lr, swap = self.mirror
        dim = 0 if lr == axis else 1 + [a for a in range(3) if a != axis].index(lr)  # in the (K, P, Q) slab
        swap = swap.to(y.device)
        if y.dim() == 4:  # class shares (C, K, P, Q)
            return x.flip(dim), y.flip(dim + 1)[swap]
        return x.flip(dim), swap[y.flip(dim).long()]

    def _augmented(self, x, gen):
        import torch

        if self.config.augment:
            x = random_gamma(x, gen)
        if self.augment is not None:
            self.augment.set_random_state(seed=int(torch.randint(2**31 - 1, (1,), generator=gen)))
            x = self.augment(x[None])[0]
            x = x.as_tensor() if hasattr(x, "as_tensor") else x  # MONAI's MetaTensor -> a plain tensor
        return x

    def __call__(self, index: int, gen) -> StepOutput:
        import torch

        from ..models.segmentation import branch_logits

        kind, i, axis, x, y = self._slab(index, gen)
        x, y = self._mirrored(x, y, axis, gen)
        c, parts = self.config, self.parts
        if c.structure_contrast > 0:
            x = structure_contrast(x, y, c.structure_contrast, gen)
        xs = to_square(self._augmented(x, gen), c.image_size).to(self.device)
        if y.dim() == 4:  # class shares, (C, K, X, Y) -> (1, C, K, S, S)
            ys, loss_fn = shares_to_square(y, c.image_size)[None].to(self.device), self.shares_loss
        else:
            ys, loss_fn = labels_to_square(y, c.image_size)[None, None].to(self.device), self.labels_loss
        logits_g, probs_g, logits_m = branch_logits(parts, xs, c.use_prompt)
        loss_g, loss_m = loss_fn(logits_g, ys), loss_fn(logits_m, ys)
        loss = (loss_g + loss_m) * (c.pseudo_weight if kind == "pseudo" else 1.0)
        terms = {"general": float(loss_g.detach()), "medical": float(loss_m.detach())}
        if c.consistency_weight > 0:
            consistency = torch.mean((torch.softmax(logits_m, 1) - probs_g) ** 2)
            loss = loss + c.consistency_weight * consistency
            terms["consistency"] = float(consistency.detach())
        return StepOutput(loss, terms, context=i)

    def contents(self) -> dict:
        """The checkpoint's weights and task."""
        return {**self.task, "parts": {n: m.state_dict() for n, m in self.parts.items()}}

    def exchange(self) -> None:
        """Mutual EMA between the two encoders after an optimiser step (when on)."""
        if self.config.use_mutual_ema:
            mutual_ema(self.parts["general"], self.parts["medical"], self.config.ema_alpha)

    def validate(self, validation) -> dict:
        """Both branches' validation Dice on working-grid (image, labels) pairs (`validation_dice`)."""
        return validation_dice(self.parts, validation, self.data.values, self.config, self.device)

    def preview(self, out: StepOutput) -> dict:
        """The step's volume with its pseudo labels and both branches' predictions (modules in evaluation mode)."""
        import torch

        i, d = out.context, self.data
        probs = predict_probabilities(self.parts, d.images[i].to(self.device), self.config)
        return {
            "case": i,
            "target": d.images[i].numpy(),
            "pseudo_labels": d.values[d.targets[i].numpy()],
            "auto_prompt": d.values[torch.argmax(probs[0], 0).cpu().numpy()],
            "segmentation": d.values[torch.argmax(probs[1], 0).cpu().numpy()],
        }
