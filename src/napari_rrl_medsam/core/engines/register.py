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

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..checkpoint import check_same_task, load_checkpoint, resume_state, save_checkpoint
from ..device import resolve_device
from ..errors import InputError
from ..models.encoder import LightEncoder
from ..models.registration import RegistrationSpec, build_registration
from ..registration import KIND, RegistrationModel, encoder_features, intensities, registration_losses, warp_layer
from ..resample import resample, working_grid
from ..task import check_atlas, check_pair
from ..volume import Volume
from .events import Progress, check_finite, due, initialised_settings, resumed_settings


@dataclass
class RegistrationTrainConfig(RegistrationSpec):
    """A registration model's spec (`RegistrationSpec`: network, inputs, objective) and how it is trained."""

    steps: int = 1000
    lr: float = 1e-3
    dice_weight: float = 0.0  # Dice coupling with the targets' segmentations (needs `segmentations`)
    augment: bool = True
    checkpoint_every: int = 50
    preview_every: int = 10
    validate_every: int = 50  # validation Dice (the network alone, native grid) every so many steps, when given
    seed: int = 0
    device: str = "auto"


# the settings that shape the network and its inputs: a fine-tuned run keeps its init's
ARCHITECTURE = ("spacing", "axis", "feature_level", "feature_size", "use_features", "network")


def _gamma(x, gen):
    import torch

    return x.clamp(0, 1) ** torch.exp(torch.empty(1).uniform_(-0.3, 0.3, generator=gen)).item()


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
) -> Iterator[Progress]:
    """`segmentations`: for Dice coupling, a label map per target (on its image's grid) or None to skip one.
    `validation`: labelled (image, labels) volumes whose Dice (`validation_dice`) the events' metrics report every
    `validate_every` steps, as "val_dice_registration".
    `init`: a registration checkpoint to start from (fine-tuning: its network, encoder and working grid, this
    run's training settings such as `dice_weight`, a new optimiser)."""
    import torch

    config = copy.deepcopy(config) if config is not None else RegistrationTrainConfig()
    checkpoint = Path(checkpoint)
    if not targets:
        raise InputError("registration training needs at least one unlabelled volume.")
    atlas_labels = check_atlas(atlas, atlas_labels)
    state = resume_state(checkpoint, KIND, resume)
    start = state  # the weights this run starts from: its own checkpoint, else `init`'s, else new ones
    if state is not None:
        config = RegistrationTrainConfig.from_dict(resumed_settings(state["config"], config))
    elif init is not None:
        start = load_checkpoint(init, KIND)
        config = RegistrationTrainConfig.from_dict(initialised_settings(start["config"], config, ARCHITECTURE))
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    net, medical = build_registration(config, start, encoder)
    net, medical = net.to(device), medical.to(device) if medical is not None else None
    optimiser = torch.optim.Adam(net.parameters(), lr=config.lr)
    step = 0
    if state is not None:
        optimiser.load_state_dict(state["optimizer"])
        step = int(state["step"])
    grid = working_grid(atlas, config.spacing)
    a = intensities(atlas, grid).to(device)
    ts = [intensities(t, grid) for t in targets]
    labels_work = torch.from_numpy(resample(atlas_labels, grid).array.astype(np.float32))[None, None].to(device)
    feats_a, feats_t = None, [None] * len(ts)
    if medical is not None:
        feats_a, feats_t = encoder_features(medical, a, config), []
        for i, t in enumerate(ts):
            feats_t.append(encoder_features(medical, t, config))
            yield Progress("features", i + 1, len(ts), message="medical encoder features")
    ncc, smooth = registration_losses(config)
    warp_image, warp_labels = warp_layer(), warp_layer("nearest")
    label_values = [int(v) for v in np.unique(atlas_labels.array) if v != 0]
    if start is not None:
        check_same_task(start, checkpoint if state is not None else init, grid, label_values)
    coupled = _coupling_targets(config, targets, segmentations, label_values, grid)
    if coupled:
        from monai.losses import DiceLoss

        dice_loss = DiceLoss(include_background=False)
        atlas_onehot = _one_hot(resample(atlas_labels, grid).array, label_values).to(device)
    saved_step = step if state is not None else -1
    origin = str(init) if state is None and init is not None else (state or {}).get("initialised_from")

    def save() -> Path:
        return save_checkpoint(
            {
                "kind": KIND,
                "version": 1,
                "step": step,
                "complete": step >= config.steps,
                "config": config.to_dict(),
                "network": net.state_dict(),
                "optimizer": optimiser.state_dict(),
                "encoder_config": medical.config.to_dict() if medical is not None else None,
                "encoder": medical.state_dict() if medical is not None else {},
                "teacher": getattr(medical, "teacher", {}) if medical is not None else {},
                "labels": label_values,
                "grid": {"shape": list(grid.shape), "affine": grid.affine.tolist()},
                "initialised_from": origin,
            },
            checkpoint,
        )

    try:
        net.train()
        while step < config.steps:
            gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
            i = int(torch.randint(len(ts), (1,), generator=gen))
            x_a, x_t = a, ts[i].to(device)
            if config.augment:
                x_a, x_t = _gamma(x_a, gen), _gamma(x_t, gen)
            ddf = net(x_a, x_t, feats_a, feats_t[i])
            sim = ncc(warp_image(x_a, ddf), x_t)
            reg = smooth(ddf)
            loss = sim + config.smooth_weight * reg
            terms = {"ncc": float(sim.detach()), "smooth": float(reg.detach())}
            if coupled and coupled[i] is not None:
                dice = dice_loss(warp_image(atlas_onehot, ddf), coupled[i].to(device))
                loss = loss + config.dice_weight * dice
                terms["dice"] = float(dice.detach())
            check_finite(loss, "registration training", step + 1)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            step += 1
            path = None
            if due(step, config.checkpoint_every, config.steps):
                path, saved_step = save(), step
            preview = None
            if config.preview_every and due(step, config.preview_every, config.steps):
                with torch.no_grad():
                    d = ddf.detach()
                    preview = {
                        "case": i,
                        "target": ts[i][0, 0].numpy(),
                        "warped_atlas": warp_image(a, d)[0, 0].cpu().numpy(),
                        "pseudo_labels": warp_labels(labels_work, d)[0, 0].cpu().numpy().astype(np.int32),
                    }
            metrics = {}
            if validation and config.validate_every and due(step, config.validate_every, config.steps):
                model = RegistrationModel(net, medical, config, label_values, grid, {}, device, {})
                metrics = {"val_dice_registration": validation_dice(model, atlas, atlas_labels, validation)}
                net.train()
            yield Progress(
                "registration",
                step,
                config.steps,
                {"loss": float(loss.detach()), **terms},
                metrics,
                preview=preview,
                checkpoint=path,
            )
    finally:
        if step != saved_step:
            save()


def validation_dice(model: RegistrationModel, atlas: Volume, atlas_labels: Volume, validation) -> float:
    """Mean Dice of the atlas labels warped by `model` (the network alone, no refinement) onto each labelled
    (image, labels) pair, on the labels' grid, over the structures of those labels."""
    from ..metrics import evaluate

    scores = []
    for image, truth in validation:
        warped = model.register(atlas, atlas_labels, image, refine_steps=0).warped_labels
        warped = warped if warped.grid.same_as(truth.grid) else resample(warped, truth.grid)
        scores.append(evaluate(warped, truth, hd95=False).mean_dice)
    return float(np.mean(scores))


def _one_hot(labels: np.ndarray, values: list[int]):
    """(X, Y, Z) label map -> (1, 1 + len(values), X, Y, Z) float one-hot, channel 0 = background."""
    import torch

    lut = np.zeros(max(int(labels.max()), max(values)) + 1, np.int64)
    lut[values] = np.arange(1, len(values) + 1)
    index = torch.from_numpy(lut[labels.astype(np.int64)])
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
