"""Checks for the settings dataclasses (training configs): called from their `__post_init__`.

Values are coerced where that is lossless (a numpy scalar from `np.logspace` becomes a Python number, an
integral float an int) and refused otherwise, so a bad setting fails when it is given, not when a saved
checkpoint is loaded again.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from .errors import InputError

# counts that must be at least 1; counts, cadences and weights that may be 0 (a distillation stage skipped,
# previews off); shares of steps or rates between 0 and 1
POSITIVE = (
    "steps",
    "batch_size",
    "slab",
    "image_size",
    "checkpoint_every",
    "slices_per_volume",
    "teacher_batch",
    "decoder_width",
    "ncc_kernel",
    "feature_size",
)
NON_NEGATIVE = (
    "natural_steps",
    "medical_steps",
    "preview_every",
    "validate_every",
    "refine_steps",
    "seed",
    "lr",
    "encoder_lr",
    "smooth_weight",
    "dice_weight",
    "consistency_weight",
    "weight_decay",
    "pseudo_weight",
    "structure_contrast",
)
SHARES = ("atlas_probability", "synthetic_probability", "replay", "ema_alpha", "min_lr_ratio", "slab_overlap")


def _coerce(name: str, kind: str, value: Any) -> Any:
    """`value` as the Python type `kind` ("int", "float", "bool", "str") names, or an InputError."""
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # numpy / torch scalar
        value = value.item()
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and not isinstance(value, bool):
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise InputError(f"setting {name} = {value} is not a finite number.")
        return float(value)
    if kind == "str" and isinstance(value, str):
        return value
    raise InputError(f"setting {name} must be {'an' if kind == 'int' else 'a'} {kind}, not {value!r}.")


def check_settings(config: Any) -> None:
    """Coerce and check a settings dataclass in place (plain int / float / bool / str fields and ranges).

    Args:
        config: a dataclass instance such as `CotrainConfig`.
    """
    for f in fields(config):
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        value = getattr(config, f.name)
        if kind.endswith(" | None") and value is None:
            continue
        kind = kind.removesuffix(" | None")
        if kind in ("int", "float", "bool", "str"):
            value = _coerce(f.name, kind, value)
            setattr(config, f.name, value)
        if f.name in POSITIVE and value < 1:
            raise InputError(f"setting {f.name} must be at least 1, not {value}.")
        if f.name in NON_NEGATIVE and value < 0:
            raise InputError(f"setting {f.name} must not be negative ({value}).")
        if f.name in SHARES and not 0 <= value <= 1:
            raise InputError(f"setting {f.name} must be between 0 and 1, not {value}.")
