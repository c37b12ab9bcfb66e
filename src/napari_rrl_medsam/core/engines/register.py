"""Training the registration network atlas -> unlabelled volumes (unsupervised: local NCC + smoothness).

Optional Dice coupling (`dice_weight` > 0 with `segmentations`, label maps of the targets, e.g. from a
co-trained model): the atlas's one-hot labels, warped linearly, are also pulled towards each target's
segmentation by a soft Dice loss (MONAI), as in joint registration-segmentation training.

The medical encoder E_m (initialised from the distilled general encoder) gives each volume a 3D feature
volume, computed once here (E_m is frozen at this stage; co-training updates it later). Each step
registers the atlas to one unlabelled volume; augmentation jitters both intensities (gamma) so the
network does not rely on exact contrast. Events carry previews for live display: the current target,
the warped atlas and its pseudo labels. Stop/crash -> checkpoint; `resume=True` continues.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..augment import random_gamma
from ..checkpoint import check_same_task
from ..configs import RegistrationTrainConfig
from ..device import training_dtype
from ..errors import InputError
from ..models.encoder import LightEncoder
from ..models.registration import build_registration
from ..registration import KIND, RegistrationModel, encoder_features, intensities, registration_losses, warp_layer
from ..resample import resample, working_grid
from ..task import check_pair, label_indices, labelled_volumes
from ..volume import Grid, Volume
from .distributed import join
from .events import Progress
from .loop import Hook, Loop, StepOutput, starting_point

# the settings that shape the network and its inputs: a fine-tuned run keeps its init's
ARCHITECTURE = ("spacing", "axis", "feature_level", "feature_size", "use_features", "network")


@dataclass
class _Pairs:
    """The labelled volumes (the atlas first) and the unlabelled volumes on the working grid, with their encoder
    features and the labelled volumes' labels (working-grid maps for previews, one-hot for Dice coupling)."""

    atlases: list
    targets: list
    atlas_features: list
    target_features: list
    labels: list
    coupled: list | None  # per target: its segmentation one-hot, or None (Dice coupling)
    atlas_onehots: list | None
    grid: Grid
    values: list[int]  # the atlas's label values
    names: list[str]  # the labelled volumes' names, recorded in the checkpoint


def registration_engine(
    atlas: Volume,
    atlas_labels: Volume,
    targets: Sequence[Volume],
    checkpoint: str | Path,
    encoder: LightEncoder | None = None,
    config: RegistrationTrainConfig | None = None,
    resume: bool = False,
    segmentations: Sequence[Volume | None] = (),
    init: str | Path | None = None,
    validation: Sequence[tuple[Volume, Volume]] = (),
    labelled: Sequence[tuple[Volume, Volume]] = (),
    proceed: bool = False,
) -> Iterator[Progress]:
    """Train the registration network atlas -> `targets`, yielding `Progress` events; writes `checkpoint`.

    Args:
        atlas, atlas_labels: the labelled volume.
        targets: the unlabelled volumes.
        checkpoint: the run's checkpoint file (also written on stop).
        encoder: the distilled encoder the medical encoder starts from (with `use_features`).
        config: the settings (default: the recipe).
        resume: continue `checkpoint`.
        segmentations: for Dice coupling, a label map per target (on its image's grid) or None to skip one.
        init: a registration checkpoint to start from (fine-tuning: its network, encoder and working grid, this
            run's training settings such as `dice_weight`, a new optimiser).
        validation: labelled (image, labels) volumes whose Dice (`validation_dice`) the events' metrics report
            every `validate_every` steps, as "val_dice_registration".
        labelled: further labelled (image, labels) volumes: each step registers one of the labelled volumes (the
            atlas or one of these, drawn at random) to an unlabelled one; their label sets must be the atlas's.
        proceed: with `init`, continue its step count (`config.steps` more steps) instead of starting at 0.
    """
    import torch

    if not targets:
        raise InputError("registration training needs at least one unlabelled volume.")
    atlases = labelled_volumes(atlas, atlas_labels, labelled)
    start = starting_point(checkpoint, KIND, resume, config or RegistrationTrainConfig(), init, ARCHITECTURE, proceed)
    config = start.config
    _, device = join(config.device)
    torch.manual_seed(config.seed)
    net, medical = build_registration(config, start.weights, encoder)
    net, medical = net.to(device), medical.to(device) if medical is not None else None
    grid = working_grid(atlas, config.spacing)
    label_values = [int(v) for v in np.unique(atlases[0][1].array) if v != 0]
    if start.weights is not None:
        check_same_task(start.weights, checkpoint if start.state is not None else init, grid, label_values)
    pairs = yield from _prepare(atlases, targets, segmentations, medical, config, grid, label_values, device)
    step = _RegistrationStep(net, medical, pairs, config, device)
    hooks = [
        Hook(config.preview_every, step.preview, "preview"),
        Hook(config.validate_every if validation else 0, lambda _: step.validate(atlases, validation)),
    ]
    optimiser = torch.optim.Adam(net.parameters(), lr=config.lr)
    name = "registration training"
    autocast = training_dtype(device, config.amp)
    loop = Loop(
        name, "registration", config, step, optimiser, checkpoint, KIND, start, step.contents, hooks=hooks,
        autocast=autocast,
    )  # fmt: skip
    yield from loop.run(modules=[net])


def _prepare(atlases, targets, segmentations, medical, config, grid, label_values, device):
    """The training pairs on the working grid (`_Pairs`), yielding an event per volume's encoder features."""
    import torch

    moving = [intensities(image, grid).to(device) for image, _ in atlases]
    ts = [intensities(t, grid) for t in targets]
    labels = [resample(lab, grid).array for _, lab in atlases]
    feats_a, feats_t = [None] * len(moving), [None] * len(ts)
    if medical is not None:
        feats_a, feats_t = [encoder_features(medical, a, config) for a in moving], []
        for i, t in enumerate(ts):
            feats_t.append(encoder_features(medical, t, config))
            yield Progress("features", i + 1, len(ts), message="medical encoder features")
    coupled = _coupling_targets(config, targets, segmentations, label_values, grid)
    onehots = [_one_hot(lab, label_values).to(device) for lab in labels] if coupled else None
    work = [torch.from_numpy(lab.astype(np.float32))[None, None].to(device) for lab in labels]
    names = [image.name for image, _ in atlases]
    return _Pairs(moving, ts, feats_a, feats_t, work, coupled, onehots, grid, label_values, names)


class _RegistrationStep:
    """One step: a labelled volume (the atlas, or one drawn among several) registered to a random unlabelled
    volume (both gamma-jittered), local NCC + smoothness (+ Dice coupling); and its preview (the target, the warped
    labelled volume, its pseudo labels)."""

    def __init__(self, net, medical, pairs: _Pairs, config: RegistrationTrainConfig, device) -> None:
        self.net, self.medical, self.pairs, self.config, self.device = net, medical, pairs, config, device
        self.ncc, self.smooth = registration_losses(config)
        self.warp_image, self.warp_labels = warp_layer(), warp_layer("nearest")
        if pairs.coupled:
            from monai.losses import DiceLoss

            self.dice_loss = DiceLoss(include_background=False)

    def __call__(self, index: int, gen) -> StepOutput:
        import torch

        p, config = self.pairs, self.config
        i = int(torch.randint(len(p.targets), (1,), generator=gen))
        m = int(torch.randint(len(p.atlases), (1,), generator=gen)) if len(p.atlases) > 1 else 0
        x_a, x_t = p.atlases[m], p.targets[i].to(self.device)
        if config.augment:
            x_a, x_t = random_gamma(x_a, gen), random_gamma(x_t, gen)
        ddf = self.net(x_a, x_t, p.atlas_features[m], p.target_features[i])
        sim, reg = self.ncc(self.warp_image(x_a, ddf), x_t), self.smooth(ddf)
        loss = sim + config.smooth_weight * reg
        terms = {"ncc": float(sim.detach()), "smooth": float(reg.detach())}
        if p.coupled and p.coupled[i] is not None:
            dice = self.dice_loss(self.warp_image(p.atlas_onehots[m], ddf), p.coupled[i].to(self.device))
            loss = loss + config.dice_weight * dice
            terms["dice"] = float(dice.detach())
        return StepOutput(loss, terms, context=(i, m, ddf.detach()))

    def validate(self, atlases: list[tuple[Volume, Volume]], validation) -> dict:
        """The network's validation Dice on labelled (image, labels) pairs (`validation_dice`)."""
        p = self.pairs
        model = RegistrationModel(self.net, self.medical, self.config, p.values, p.grid, {}, self.device, {})
        return {"val_dice_registration": validation_dice(model, atlases, validation)}

    def contents(self) -> dict:
        """The checkpoint's weights and task."""
        medical = self.medical
        return {
            "network": self.net.state_dict(),
            "encoder_config": medical.config.to_dict() if medical is not None else None,
            "encoder": medical.state_dict() if medical is not None else {},
            "teacher": getattr(medical, "teacher", {}) if medical is not None else {},
            "labels": self.pairs.values,
            "grid": self.pairs.grid.to_dict(),
            "labelled": self.pairs.names,
        }

    def preview(self, out: StepOutput) -> dict:
        import torch

        i, m, ddf = out.context
        p = self.pairs
        with torch.no_grad():
            return {
                "case": i,
                "moving": m,  # which labelled volume (0: the atlas)
                "target": p.targets[i][0, 0].numpy(),
                "warped_atlas": self.warp_image(p.atlases[m], ddf)[0, 0].cpu().numpy(),
                "pseudo_labels": self.warp_labels(p.labels[m], ddf)[0, 0].cpu().numpy().astype(np.int32),
            }


def validation_dice(model: RegistrationModel, atlases: Sequence[tuple[Volume, Volume]], validation) -> float:
    """Mean Dice of the labelled volumes' labels warped by `model` (the network alone, no refinement; several
    fused by the local vote) onto each labelled (image, labels) pair, on the labels' grid, over the structures of
    those labels."""
    from ..metrics import evaluate

    scores = []
    for image, truth in validation:
        warped = model.register_atlases(atlases, image, refine_steps=0).labels
        warped = warped if warped.grid.same_as(truth.grid) else resample(warped, truth.grid)
        scores.append(evaluate(warped, truth, hd95=False).mean_dice)
    return float(np.mean(scores))


def _one_hot(labels: np.ndarray, values: list[int]):
    """(X, Y, Z) label map -> (1, 1 + len(values), X, Y, Z) float one-hot, channel 0 = background."""
    import torch

    index = torch.from_numpy(label_indices(labels, [0, *values]))
    return torch.nn.functional.one_hot(index, len(values) + 1).movedim(-1, 0)[None].float()


def _coupling_targets(
    config: RegistrationTrainConfig,
    targets: Sequence[Volume],
    segmentations: Sequence[Volume | None],
    values: list[int],
    grid,
) -> list | None:
    """The targets' segmentations one-hot on the working grid (None where a target has none), if coupling is on."""
    if config.dice_weight <= 0:
        return None
    if len(segmentations) != len(targets):
        raise InputError(
            f"Dice coupling (dice_weight={config.dice_weight}) needs one segmentation per unlabelled "
            f"volume (or None for some): got {len(segmentations)} for {len(targets)} volumes."
        )
    out = []
    for target, seg in zip(targets, segmentations):
        if seg is None:
            out.append(None)
            continue
        check_pair(target.grid, seg.grid, "unlabelled volume")
        array = resample(seg.with_array(seg.array, kind="labels"), grid).array
        array = np.where(np.isin(array, values), array, 0)  # structures the atlas does not have are background
        out.append(_one_hot(array, values))
    return out
