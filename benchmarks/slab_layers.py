"""What the slab decoders' CPU layers save: PyTorch's 3D convolution against `SliceConv3d`, and one whole
co-training step with each (`core/models/slab_layers.py`).

Prints, per in-plane size, the milliseconds of a 3 x 3 x 3 convolution of 64 -> 32 channels on a slab of 8
slices (forward and backward, and forward alone), then seconds per co-training step (slab 8, 36 classes, both
branches, loss, optimiser and mutual EMA, as the engine's step) at 96, 128 and 192 px with the decoders'
convolutions computed by PyTorch's Conv3d and by SliceConv3d (the in-plane upsampling is `resize_in_plane`'s in
both), alternated `--repeats` times (this machine's timings drift by 10-20% from one minute to the next).

    python benchmarks/slab_layers.py [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from napari_rrl_medsam.core.engines.cotrain import CotrainConfig, build_parts
from napari_rrl_medsam.core.models.encoder import EncoderConfig
from napari_rrl_medsam.core.models.segmentation import slab_features
from napari_rrl_medsam.core.models.slab_layers import SliceConv3d, slice_conv

SIZES = (16, 32, 48, 64, 96)
N_CLASSES = 36  # the OASIS-like task: background and 35 FreeSurfer structures


def _ms(fn, repeats: int = 6) -> float:
    for _ in range(2):
        fn()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats * 1e3


def layer_table() -> None:
    print("3x3x3 convolution, 64 -> 32 channels, 8 slices: milliseconds")
    print(f"{'px':>4} {'Conv3d fwd+bwd':>15} {'SliceConv3d':>12} {'Conv3d fwd':>11} {'SliceConv3d':>12}")
    for size in SIZES:
        native = torch.nn.Conv3d(64, 32, 3, padding=1)
        fast = slice_conv(native)
        x = torch.randn(1, 64, 8, size, size, requires_grad=True)
        row = [_ms(lambda: conv(x).sum().backward()) for conv in (native, fast)]
        with torch.no_grad():
            row += [_ms(lambda: conv(x)) for conv in (native, fast)]
        print(f"{size:>4} {row[0]:>15.0f} {row[1]:>12.0f} {row[2]:>11.0f} {row[3]:>12.0f}")


def step_function(size: int):
    """One co-training step on a random slab, as the engine's."""
    from monai.losses import DiceCELoss

    from napari_rrl_medsam.core.models.segmentation import mutual_ema

    parts = build_parts(CotrainConfig(image_size=size, use_dskd=False), EncoderConfig(), N_CLASSES)
    encoders = [p for n in ("general", "medical") for p in parts[n].parameters()]
    decoders = [p for n in ("decoder_g", "ap") for p in parts[n].parameters()]
    optimiser = torch.optim.AdamW([{"params": encoders, "lr": 5e-4}, {"params": decoders, "lr": 1e-2}])
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    x = torch.rand(8, 3, size, size)
    y = torch.randint(0, N_CLASSES, (1, 1, 8, size, size))

    def step() -> None:
        logits_g = parts["decoder_g"](slab_features(parts["general"], x))
        logits_m = parts["ap"](slab_features(parts["medical"], x), torch.softmax(logits_g, 1).detach())
        loss = loss_fn(logits_g, y) + loss_fn(logits_m, y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        mutual_ema(parts["general"], parts["medical"])

    return step


def step_table(repeats: int) -> None:
    print("\nco-training step (slab 8, 36 classes): seconds, Conv3d / SliceConv3d, alternated")
    fast_forward = SliceConv3d.forward
    for size in (96, 128, 192):
        step = step_function(size)
        times = {"Conv3d": [], "SliceConv3d": []}
        for _ in range(repeats):
            for name, forward in (("Conv3d", torch.nn.Conv3d.forward), ("SliceConv3d", fast_forward)):
                SliceConv3d.forward = forward
                times[name].append(_ms(step, 4) / 1e3)
        SliceConv3d.forward = fast_forward
        mean = {k: sum(v) / len(v) for k, v in times.items()}
        print(
            f"{size:>4} px  {mean['Conv3d']:.2f} / {mean['SliceConv3d']:.2f} s  "
            f"({1 - mean['SliceConv3d'] / mean['Conv3d']:.0%} less)  runs: "
            + "  ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(times["Conv3d"], times["SliceConv3d"]))
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    layer_table()
    step_table(args.repeats)


if __name__ == "__main__":
    main()
