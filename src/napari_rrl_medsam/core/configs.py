"""Every model's and training stage's settings: plain dataclasses, importable without torch.

The specs (`RegistrationSpec`, `SegmentationSpec`, `EncoderConfig`) record what shapes a model; each training
stage's config extends its model's spec with how it is trained. Checkpoints save them as dicts (`to_dict` /
`from_dict`); the napari widgets read their defaults before torch has loaded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .errors import InputError
from .settings import check_settings

# instance optimisation steps per pair, wherever a face registers without being told: +0.04 mean Dice over the
# network alone for about 1.5 s per brain (docs/benchmarks.md, "ours + 5 refinement steps")
REFINE_STEPS = 5
# synthetic pairs (core/synthetic.py): the synthetic image's appearance, how its field is sampled
APPEARANCES = ("style", "fourier", "none")
FIELD_MODES = ("mix", "scale")


@dataclass
class EncoderConfig:
    """Architecture of the lightweight encoder; saved with every checkpoint so it can be rebuilt."""

    in_channels: int = 3
    channels: tuple[int, ...] = (32, 64, 160, 256)  # strides 2, 4, 8, 16
    embed_dim: int = 256  # the teacher's embedding channels
    neck_channels: int = 160

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> EncoderConfig:
        d = dict(d)
        d["channels"] = tuple(d["channels"])
        return cls(**d)


@dataclass
class RegistrationConfig:
    channels: tuple[int, ...] = (8, 16, 32, 32)  # full, 1/2, 1/4, 1/8 resolution
    feature_channels: int = 64  # encoder feature channels per volume (0: intensities only)
    feature_projection: int = 4  # each volume's features projected to this many channels
    diffeomorphic: bool = True
    integration_steps: int = 7

    @property
    def scaling_and_squaring_steps(self) -> int:
        """Integration steps of the network's output (0: the output is a displacement, not a velocity)."""
        return self.integration_steps if self.diffeomorphic else 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RegistrationConfig:
        d = dict(d)
        d["channels"] = tuple(d["channels"])
        return cls(**d)


@dataclass
class RegistrationSpec:
    """The registration model as checkpoints record it: network, inputs and objective.

    Args:
        spacing: the working grid's isotropic voxel size (mm).
        axis: the slicing axis of the encoder features.
        feature_level: the encoder stage whose features enter (1: stride 4, 64 channels).
        feature_size: the encoder's input side (2 mm slices are ~112 px; 256 spent 4x on upsampled pixels).
        use_features: False: intensities only, no medical encoder.
        ncc_kernel: the local NCC window (voxels) of the similarity loss (training and instance optimisation).
        smooth_weight: the weight of the diffusion (smoothness) loss.
        network: the U-Net's own shape.
    """

    spacing: float = 2.0
    axis: int = 2
    feature_level: int = 1
    feature_size: int = 128
    use_features: bool = True
    ncc_kernel: int = 9
    smooth_weight: float = 1.0
    network: RegistrationConfig = field(default_factory=RegistrationConfig)

    def __post_init__(self) -> None:
        check_settings(self)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["network"] = self.network.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict):
        """From a checkpoint's config (unknown keys are passed over: a spec reads a training config's dict)."""
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        d.setdefault("feature_size", 256)  # checkpoints from before the option used 256 px
        d["network"] = RegistrationConfig.from_dict(d.get("network", {}))
        return cls(**d)


# FreeSurfer's left / right structure pairs (cerebral white matter, cortex, lateral and inferior lateral
# ventricles, cerebellar white matter and cortex, thalamus, caudate, putamen, pallidum, hippocampus, amygdala,
# accumbens, ventral DC, vessel, choroid plexus), for aseg-style labels: test-time mirroring
# (`segment(mirror=FREESURFER_LEFT_RIGHT)`) and training-time mirroring (`CotrainConfig.mirror="freesurfer"`)
FREESURFER_LEFT_RIGHT = (
    (2, 41),
    (3, 42),
    (4, 43),
    (5, 44),
    (7, 46),
    (8, 47),
    (10, 49),
    (11, 50),
    (12, 51),
    (13, 52),
    (17, 53),
    (18, 54),
    (26, 58),
    (28, 60),
    (30, 62),
    (31, 63),
)


def mirror_pairs(text: str) -> tuple[tuple[int, int], ...]:
    """Left / right label pairs from their text: "freesurfer" (`FREESURFER_LEFT_RIGHT`), or left:right label
    values, "2:41,3:42"; "" for none.

    Args:
        text: the pairs as the CLI's `--mirror` and `CotrainConfig.mirror` take them.
    """
    if not text.strip():
        return ()
    if text.strip().lower() == "freesurfer":
        return FREESURFER_LEFT_RIGHT
    try:
        pairs = tuple(tuple(int(v) for v in pair.split(":")) for pair in text.split(","))
    except ValueError:
        pairs = ()
    if not pairs or any(len(pair) != 2 for pair in pairs):
        raise InputError(f"mirror pairs are 'freesurfer' or left:right label values such as 2:41,3:42, not {text!r}.")
    return pairs  # type: ignore[return-value]


# the working grid's voxel axis each view's slabs run along (the grid is RAS: 0 left-right, 1 posterior-anterior,
# 2 inferior-superior)
VIEW_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}


def view_axes(views: str) -> list[int]:
    """The voxel axes of comma-separated view names (`SegmentationSpec.views`), in the order given.

    Args:
        views: e.g. "axial" or "axial,coronal".
    """
    names = [v.strip() for v in views.split(",") if v.strip()]
    wrong = [v for v in names if v not in VIEW_AXES]
    if not names or wrong or len(set(names)) < len(names):
        raise InputError(
            f"views must name each of {', '.join(VIEW_AXES)} at most once, comma-separated (e.g. 'axial,coronal'), "
            f"not {views!r}."
        )
    return [VIEW_AXES[v] for v in names]


@dataclass
class SegmentationSpec:
    """The segmentation model as checkpoints record it: its decoders and how it sees a volume.

    Args:
        slab: consecutive slices per slab (the 3D decoders' depth).
        image_size: the encoder's input side per slice (2 mm brain slices are about 112 px across).
        decoder_width: channels of the decoders.
        use_prompt: the AP decoder takes the general branch's mask as a prompt (False: the ablation).
        prompt_residual: AP logits + log M_g: the AP decoder corrects the prompt (see `APDecoder`).
        full_resolution: each decoder's logits (from half resolution, upsampled) get a correction computed at
            the slices' own resolution from the image (`FullResolutionStage`): measured +0.002 to +0.004 mean Dice
            (two seeds) on the OASIS-like benchmark in fewer steps, but each CPU step costs about 1.4x (off by default).
        norm_statistics: prediction's batch norm: "slab" = each slab's own statistics, as in training (+0.017
            Dice measured), or "running" = the running averages (the usual eval mode).
        slab_overlap: prediction: consecutive slabs overlap by this fraction, probabilities averaged (+0.003
            Dice for about 1.3x the segmentation time, measured).
        views: the slice orientations slabs are cut in, comma-separated, of the RAS working grid: "axial"
            (slabs along inferior-superior), "coronal" (posterior-anterior), "sagittal" (left-right; its slices
            cannot tell left from right structures). Training draws one view per step; prediction averages the
            views' probabilities (the network's time once per view).
    """

    slab: int = 8
    image_size: int = 128
    decoder_width: int = 32
    use_prompt: bool = True
    prompt_residual: bool = True
    full_resolution: bool = False
    norm_statistics: str = "slab"
    slab_overlap: float = 0.5
    views: str = "axial"

    def __post_init__(self) -> None:
        check_settings(self)
        view_axes(self.views)
        if self.image_size % 2:  # the decoders' logits come from half the slice's side, upsampled by 2
            raise InputError(f"image_size must be even, not {self.image_size}: use {self.image_size + 1}.")

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def legacy() -> dict:
        """Values of keys older checkpoints lack: those they were trained with."""
        return {"prompt_residual": False}

    @classmethod
    def from_dict(cls, d: dict):
        """From a checkpoint's config (unknown keys are passed over: a spec reads a training config's dict)."""
        known = {f.name for f in fields(cls)}
        return cls(**{**cls.legacy(), **{k: v for k, v in d.items() if k in known}})


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
    amp: bool = False  # mixed precision: float16 (a gradient scaler) on CUDA, bfloat16 on a CPU that has it natively


@dataclass
class CotrainConfig(SegmentationSpec):
    """A segmentation model's spec (`SegmentationSpec`: decoders, slab, slice size) and how it is co-trained."""

    # the recipe's (training/cotrain.json: 30 minutes of steps on 2 cores at ENVIRONMENT.md's reference speed, in
    # bfloat16 (`amp`): 3,300 steps 0.779 against 2,200 steps 0.775); the quick budget (api.QUICK) runs 900 at 96 px
    steps: int = 3300
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
    # per-structure random intensity offsets, N(0, this) per class, blurred (`augment.structure_contrast`); 0: off
    structure_contrast: float = 0.0
    # train on each class's share of each working-grid voxel (the native atlas labels' partial volumes, warped:
    # `warp.label_shares`) instead of one nearest label; synthetic pairs and fused self-training labels stay nearest
    label_shares: bool = False
    # left-right mirroring of the training slabs ("" off; "freesurfer" or "2:41,3:42": `mirror_pairs`): half the
    # slabs flipped along the working grid's left-right axis, left and right labels exchanged
    mirror: str = ""
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
    # mixed precision: float16 (a gradient scaler) on CUDA, bfloat16 on a CPU that has it natively (1.5x faster
    # steps there, the same Dice); float32 on other CPUs
    amp: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        mirror_pairs(self.mirror)

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


@dataclass
class DistillConfig:
    natural_steps: int = 600
    medical_steps: int = 600
    batch_size: int = 8
    lr: float = 2e-3
    min_lr_ratio: float = 0.05  # cosine decay within each stage down to lr * min_lr_ratio
    weight_decay: float = 1e-4
    cosine_weight: float = 1.0
    replay: float = 0.0  # share of each medical-stage batch drawn from the photographs (against forgetting)
    freeze_norm: bool = False  # stage 2 keeps stage 1's batch-norm statistics (one normalisation for both domains)
    augment: bool = True
    image_size: int | None = None  # student input; None: 4 x the teacher's embedding grid (256 for SAM)
    slices_per_volume: int = 24  # evenly spaced through the slices with foreground
    axis: int = 2  # slicing axis of the RAS working grid (2: axial)
    spacing: float = 2.0  # working resolution in mm
    checkpoint_every: int = 100
    seed: int = 0
    device: str = "auto"
    teacher_batch: int = 4
    encoder: EncoderConfig = field(default_factory=EncoderConfig)

    def __post_init__(self) -> None:
        check_settings(self)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["encoder"] = self.encoder.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DistillConfig:
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        d["encoder"] = EncoderConfig.from_dict(d.get("encoder", {}))
        return cls(**d)
