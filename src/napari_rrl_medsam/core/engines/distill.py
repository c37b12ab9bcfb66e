"""Dual-stage knowledge distillation (DSKD) of the lightweight general encoder from a frozen SAM teacher.

Stage 1 ("natural") regresses the teacher's embeddings of photographs (general knowledge), stage 2
("medical") those of slices of the user's unlabelled volumes; optionally (`replay`) a share of each stage-2
batch is still drawn from the photographs so that stage 2 does not erase what stage 1 taught, and
(`freeze_norm`) stage 2 normalises with stage 1's batch-norm statistics instead of re-estimating them on a mix
of domains. Loss: MSE + `cosine_weight` * (1 - cosine similarity over channels). Teacher embeddings are
computed once (cached on disk). Augmentation acts on the student's input intensities only (brightness,
contrast, gamma, noise), so the cached teacher targets stay exact while the student learns to ignore such
changes.

The engine is a generator of `Progress` events. Closing it (Stop) or an error saves a checkpoint;
running it again on that checkpoint with `resume=True` continues from the saved step. The learning
rate and the batches are functions of the step, so a resumed run follows the same schedule.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..checkpoint import load_checkpoint, reading, resume_state, save_checkpoint
from ..configs import DistillConfig, EncoderConfig
from ..device import training_dtype
from ..errors import InputError
from ..models.encoder import LightEncoder
from ..volume import Volume
from .distributed import join
from .events import Progress
from .loop import Loop, Start, StepOutput

KIND = "distill"


def teacher_embeddings(teacher, images, cache, batch_size: int, label: str):
    """Yield progress batch by batch while the cache fills; return the (N, C, h, w) float16 targets."""
    import torch

    out = []
    for i in range(0, len(images), batch_size):
        out.append(cache.embed(teacher, images[i : i + batch_size], batch_size=batch_size))
        yield Progress(
            "teacher", min(i + batch_size, len(images)), len(images), message=f"teacher embeddings of {label}"
        )
    return torch.cat(out)


def _augment(x, gen):
    """Random brightness/contrast/gamma and noise per image, on the student's input only."""
    import torch

    def uniform(low: float, high: float):
        return torch.empty(x.shape[0], 1, 1, 1).uniform_(low, high, generator=gen).to(x.device)

    gamma, contrast, bright, sigma = uniform(-0.3, 0.3).exp(), uniform(0.8, 1.2), uniform(-0.1, 0.1), uniform(0, 0.03)
    noise = torch.randn(x.shape, generator=gen).to(x.device) * sigma
    return ((x.clamp(0, 1) ** gamma - 0.5) * contrast + 0.5 + bright + noise).clamp(0, 1)


def distill_loss(pred, target, cosine_weight: float):
    import torch.nn.functional as F

    mse = F.mse_loss(pred, target)
    cos = F.cosine_similarity(pred, target, dim=1).mean()
    return mse + cosine_weight * (1 - cos), {"mse": float(mse.detach()), "cosine": float(cos.detach())}


def _lr(config: DistillConfig, step: int, start: int, length: int) -> float:
    t = (step - start) / max(length, 1)
    low = config.lr * config.min_lr_ratio
    return low + 0.5 * (config.lr - low) * (1 + math.cos(math.pi * t))


def distill_engine(
    teacher,
    natural,
    medical,
    checkpoint: str | Path,
    config: DistillConfig | None = None,
    resume: bool = False,
    cache=None,
) -> Iterator[Progress]:
    """Distil `teacher` into a `LightEncoder`, yielding `Progress` events; writes `checkpoint` (also on stop).

    Args:
        teacher: a `Teacher`.
        natural, medical: (N, 3, S, S) float tensors in [0, 1] (either may be None when its stage has 0 steps).
        checkpoint: the run's checkpoint file.
        config: the settings (a resumed run keeps its checkpoint's encoder architecture, these settings otherwise).
        resume: continue `checkpoint`.
        cache: the teacher embedding cache (default: the user cache folder).
    """
    import torch

    from ..cache import EmbeddingCache

    config = copy.deepcopy(config or DistillConfig())
    _check_inputs(teacher, natural, medical, config)
    state = resume_state(checkpoint, KIND, resume)
    if state is not None:
        if state["teacher"]["id"] != teacher.id:
            raise InputError(
                f"{checkpoint} was distilled from teacher {state['teacher']['id']}, not {teacher.id}; "
                "resume with the same teacher or start a new checkpoint."
            )
        config.encoder = EncoderConfig.from_dict(state["encoder_config"])
    _, device = join(config.device)
    torch.manual_seed(config.seed)
    student = LightEncoder(config.encoder).to(device)
    if state is not None:
        student.load_state_dict(state["encoder"])
    teacher = teacher.to(device)
    step = _DistillStep(student, natural, medical, config, int(state["step"]) if state is not None else 0)
    step.targets = yield from step.teacher_targets(teacher, cache or EmbeddingCache())
    optimiser = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loop = Loop("distillation", "natural", config, step, optimiser, checkpoint, KIND, Start(state, state, config, None),
                lambda: _weights(student, teacher), total=step.bounds[2], milestones=step.bounds[1:],
                rates=step.rates, autocast=training_dtype(device, device.type == "cuda"))  # fmt: skip
    yield from loop.run(modules=[student])


def _check_inputs(teacher, natural, medical, config: DistillConfig) -> None:
    """Images the teacher's grid fits, and images for each stage with steps; each a clear error."""
    for data in (natural, medical):
        if data is not None and data.shape[-1] != 4 * teacher.embed_size:
            raise InputError(
                f"the student sees {data.shape[-1]} px images but its stride-4 embedding must match the "
                f"teacher's {teacher.embed_size} x {teacher.embed_size} grid: use image_size="
                f"{4 * teacher.embed_size}."
            )
    for name, data, steps in (("natural", natural, config.natural_steps), ("medical", medical, config.medical_steps)):
        if steps > 0 and (data is None or len(data) == 0):
            raise InputError(
                f"the {name} stage has {steps} steps but no {name} images; give some or set its steps to 0."
            )


class _DistillStep:
    """One step: a batch of one stage's images (stage 2 with a `replay` share of photographs), the student's
    embeddings against the teacher's (MSE + cosine), the stage's cosine learning rate."""

    def __init__(self, student, natural, medical, config: DistillConfig, step: int) -> None:
        self.student, self.config = student, config
        self.data = {"natural": natural, "medical": medical}
        self.bounds = [0, config.natural_steps, config.natural_steps + config.medical_steps]
        self.replay = (
            int(round(config.replay * config.batch_size)) if natural is not None and config.medical_steps else 0
        )
        self.start, self.targets = step, {}

    def teacher_targets(self, teacher, cache):
        """The teacher's embeddings of the images the remaining steps draw from, an event per batch."""
        targets = {}
        for i, name in enumerate(("natural", "medical")):
            steps = self.bounds[i + 1] - self.bounds[i]
            remaining = steps > 0 and self.start < self.bounds[i + 1]
            if remaining or (name == "natural" and self.replay and self.start < self.bounds[2]):
                batch = self.config.teacher_batch
                targets[name] = yield from teacher_embeddings(teacher, self.data[name], cache, batch, f"{name} images")
        return targets

    def rates(self, step: int) -> list[float]:
        i = 0 if step < self.bounds[1] else 1
        return [_lr(self.config, step, self.bounds[i], self.bounds[i + 1] - self.bounds[i])]

    def __call__(self, index: int, gen) -> StepOutput:
        import torch

        config, name = self.config, "natural" if index < self.bounds[1] else "medical"
        self.student.train()
        if name == "medical" and config.freeze_norm and config.natural_steps > 0:
            freeze_batch_norm(self.student)
        data, n_replay = self.data[name], self.replay if name == "medical" else 0
        idx = torch.randint(len(data), (config.batch_size - n_replay,), generator=gen)
        x, y = data[idx], self.targets[name][idx]
        if n_replay:
            rep = torch.randint(len(self.data["natural"]), (n_replay,), generator=gen)
            x, y = torch.cat([x, self.data["natural"][rep]]), torch.cat([y, self.targets["natural"][rep]])
        device = next(self.student.parameters()).device
        x, y = x.to(device), y.to(device).float()
        if config.augment:
            x = _augment(x, gen)
        pred = self.student(x)
        with torch.autocast(device.type, enabled=False):
            loss, terms = distill_loss(pred.float(), y, config.cosine_weight)
        return StepOutput(loss, terms, stage=name)


def freeze_batch_norm(module) -> None:
    """Batch norms normalise with their stored statistics and stop updating them (their affine weights still train)."""
    import torch

    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def _weights(student, teacher) -> dict:
    """A distillation checkpoint's weights and the teacher they were distilled from."""
    return {
        "encoder_config": student.config.to_dict(),
        "encoder": student.state_dict(),
        "teacher": {
            "name": teacher.name,
            "id": teacher.id,
            "sha256": teacher.weights_sha256,
            "input_size": teacher.input_size,
        },
    }


def load_encoder(path: str | Path):
    """A `LightEncoder` (eval mode) from a distillation checkpoint; `.teacher` says which teacher taught it."""
    state = load_checkpoint(path, KIND)
    with reading(path):
        encoder = LightEncoder(EncoderConfig.from_dict(state["encoder_config"]))
        encoder.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state["encoder"].items()})
        encoder.teacher = dict(state["teacher"])
        encoder.steps = int(state["step"])
    return encoder.eval()


def embedding_preview(checkpoint: str | Path, volume: Volume) -> np.ndarray:
    """The student's embedding strength (channel norm) on the middle slice with anatomy of `volume`, from a
    distillation checkpoint: a picture of what the encoder has learnt so far."""
    import torch

    from ..inputs import volume_slices

    config = load_checkpoint(checkpoint, KIND)["config"]
    x = volume_slices(volume, config["axis"], config["spacing"], config["image_size"], 1)
    with torch.no_grad():
        embedding = load_encoder(checkpoint)(x)[0]
    return embedding.norm(dim=0).numpy()


def export_encoder(checkpoint: str | Path, out: str | Path) -> Path:
    """A small shippable copy of a distillation checkpoint: encoder weights in float16, no optimiser state."""
    state = load_checkpoint(checkpoint, KIND)
    state["encoder"] = {k: v.half() if v.is_floating_point() else v for k, v in state["encoder"].items()}
    state["optimizer"] = {}
    return save_checkpoint(state, out)


def fidelity(encoder, images, targets, batch_size: int = 8) -> dict[str, float]:
    """Mean cosine similarity (over channels, per position) and MSE between encoder and teacher embeddings."""
    import torch
    import torch.nn.functional as F

    device = next(encoder.parameters()).device
    cos, mse, n = 0.0, 0.0, 0
    encoder.eval()
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            pred = encoder(images[i : i + batch_size].to(device)).float()
            y = targets[i : i + batch_size].to(device).float()
            cos += float(F.cosine_similarity(pred, y, dim=1).mean(dim=(1, 2)).sum())
            mse += float(((pred - y) ** 2).mean(dim=(1, 2, 3)).sum())
            n += len(pred)
    return {"cosine": cos / n, "mse": mse / n}


def distillation(
    volumes=(),
    natural=None,
    teacher="auto",
    teacher_checkpoint=None,
    out: str | Path = "encoder.pt",
    config: DistillConfig | None = None,
    resume: bool = False,
    cache=None,
) -> Iterator[Progress]:
    """The whole DSKD run from user-level inputs: volumes (paths or `Volume`s), a folder of photographs
    (None: scikit-image's photographs; False: skip stage 1), a teacher name or `Teacher`."""
    from ..inputs import natural_images, volume_slices
    from ..io import load_volume
    from ..teachers import Teacher, get_teacher

    config = config or DistillConfig()
    if not isinstance(teacher, Teacher):
        teacher = get_teacher(teacher, checkpoint=teacher_checkpoint, device=config.device)
    # The student's embedding sits at stride 4 and must match the teacher's grid and channels.
    config.image_size = config.image_size or 4 * teacher.embed_size
    config.encoder.embed_dim = teacher.embed_dim
    if natural is False:
        config.natural_steps = 0
    nat = natural_images(natural, config.image_size) if config.natural_steps > 0 else None
    med = None
    if config.medical_steps > 0:
        vols = [v if not isinstance(v, (str, Path)) else load_volume(v) for v in volumes]
        if not vols:
            raise InputError("the medical stage needs unlabelled volumes; give some, or set medical_steps=0.")
        import torch

        med = torch.cat(
            [volume_slices(v, config.axis, config.spacing, config.image_size, config.slices_per_volume) for v in vols]
        )
    yield from distill_engine(teacher, nat, med, out, config, resume, cache)
