"""DSKD engine with a tiny random teacher and a tiny student (seconds on 2 cores)."""

import numpy as np
import pytest
import torch
from torch import nn

from napari_rrl_medsam.api import InputError, Volume, distill
from napari_rrl_medsam.core.cache import EmbeddingCache
from napari_rrl_medsam.core.checkpoint import load_checkpoint
from napari_rrl_medsam.core.engines.distill import DistillConfig, distill_engine, fidelity, load_encoder
from napari_rrl_medsam.core.models.encoder import EncoderConfig
from napari_rrl_medsam.core.teachers import Teacher

TINY = EncoderConfig(channels=(4, 8, 8, 8), embed_dim=16, neck_channels=8)


class CountingConv(nn.Module):
    """A random 'teacher': 16 channels at stride 4, counting how many images it encoded."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(123)
        self.conv = nn.Sequential(nn.Conv2d(3, 16, 4, stride=4), nn.Tanh(), nn.Conv2d(16, 16, 1))
        self.calls = 0

    def forward(self, x):
        self.calls += len(x)
        return self.conv(x)


@pytest.fixture
def teacher():
    return Teacher(CountingConv(), "tiny", "random" * 4, input_size=32)


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 3, 32, 32, generator=g), torch.rand(6, 3, 32, 32, generator=g)


def write_photos(folder, size, suffix, n=2):
    """`n` random RGB 'photographs' of `size` (h, w) in a new folder."""
    from PIL import Image

    folder.mkdir()
    for i in range(n):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (*size, 3), dtype=np.uint8)).save(
            folder / f"{i}{suffix}"
        )
    return folder


def config(**kw):
    base = dict(
        natural_steps=3,
        medical_steps=3,
        batch_size=2,
        checkpoint_every=100,
        device="cpu",
        encoder=EncoderConfig(**TINY.to_dict()),
    )
    base.update(kw)
    return DistillConfig(**base)


def test_stop_and_resume_matches_an_uninterrupted_run(tmp_path, teacher, images):
    cache = EmbeddingCache(tmp_path / "cache")
    natural, medical = images
    full = list(distill_engine(teacher, natural, medical, tmp_path / "full.pt", config(), cache=cache))
    assert [e.step for e in full if e.stage != "teacher"] == [1, 2, 3, 4, 5, 6]
    assert [e.stage for e in full if e.stage != "teacher"] == ["natural"] * 3 + ["medical"] * 3

    run = distill_engine(teacher, natural, medical, tmp_path / "stopped.pt", config(), cache=cache)
    for event in run:
        if event.stage == "medical" and event.step == 4:
            run.close()  # Stop, as the widget's button does
            break
    saved = load_checkpoint(tmp_path / "stopped.pt", "distill")
    assert saved["step"] == 4 and not saved["complete"]
    with pytest.raises(InputError, match="resume"):
        next(distill_engine(teacher, natural, medical, tmp_path / "stopped.pt", config(), cache=cache))
    rest = [
        e.step
        for e in distill_engine(teacher, natural, medical, tmp_path / "stopped.pt", config(), resume=True, cache=cache)
        if e.stage != "teacher"
    ]
    assert rest == [5, 6]
    a, b = load_encoder(tmp_path / "full.pt"), load_encoder(tmp_path / "stopped.pt")
    assert a.steps == b.steps == 6
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(pa.float(), pb.float(), atol=1e-6), name


def test_teacher_embeddings_are_computed_once(tmp_path, teacher, images):
    cache = EmbeddingCache(tmp_path / "cache")
    natural, medical = images
    before = teacher.module.calls
    list(distill_engine(teacher, natural, medical, tmp_path / "a.pt", config(), cache=cache))
    assert teacher.module.calls - before == 12
    list(distill_engine(teacher, natural, medical, tmp_path / "b.pt", config(), cache=cache))
    assert teacher.module.calls - before == 12  # second run: all from the disk cache
    assert cache.hits >= 12


def test_distillation_brings_the_student_closer_to_the_teacher(tmp_path, teacher, images):
    natural, _ = images
    cache = EmbeddingCache(tmp_path / "cache")
    targets = cache.embed(teacher, natural)
    cfg = config(natural_steps=60, medical_steps=0, batch_size=4, lr=5e-3, augment=False)
    events = list(distill_engine(teacher, natural, None, tmp_path / "s.pt", cfg, cache=cache))
    trained = fidelity(load_encoder(tmp_path / "s.pt"), natural, targets)
    torch.manual_seed(cfg.seed)
    from napari_rrl_medsam.core.models.encoder import LightEncoder

    untrained = fidelity(LightEncoder(cfg.encoder), natural, targets)
    assert trained["mse"] < 0.5 * untrained["mse"] and trained["cosine"] > untrained["cosine"] + 0.1
    assert events[-1].losses["loss"] < [e for e in events if e.losses][0].losses["loss"]


def test_resume_with_another_teacher_is_refused(tmp_path, teacher, images):
    natural, medical = images
    list(distill_engine(teacher, natural, medical, tmp_path / "a.pt", config(), cache=EmbeddingCache(tmp_path)))
    other = Teacher(CountingConv(), "other", "f" * 64, input_size=32)
    with pytest.raises(InputError, match="distilled from teacher tiny-"):
        next(
            distill_engine(
                other, natural, medical, tmp_path / "a.pt", config(), resume=True, cache=EmbeddingCache(tmp_path)
            )
        )


def test_api_distill_from_volumes_and_a_photo_folder(tmp_path, teacher, monkeypatch):
    monkeypatch.setenv("RRL_MEDSAM_CACHE", str(tmp_path / "cache"))
    photos = write_photos(tmp_path / "photos", (40, 50), ".jpg")
    vol = Volume(np.random.default_rng(0).random((40, 40, 30)).astype(np.float32), np.eye(4))
    settings = dict(natural_steps=2, medical_steps=2, batch_size=2, slices_per_volume=3, device="cpu")
    encoder = distill(
        [vol],
        natural=photos,
        teacher=teacher,
        out=tmp_path / "enc.pt",
        progress=False,
        config={**settings, "encoder": EncoderConfig(**TINY.to_dict())},
    )
    assert encoder.teacher["name"] == "tiny" and encoder.steps == 4  # the distilled encoder, returned
    assert encoder.source == str((tmp_path / "enc.pt").resolve())
    saved = load_encoder(tmp_path / "enc.pt").state_dict()
    assert all(torch.equal(saved[k], v) for k, v in encoder.state_dict().items())
    with pytest.raises(InputError, match="DistillConfig fields are"):
        distill([vol], natural=photos, teacher=teacher, out=tmp_path / "x.pt", config={"no_such_setting": 1})
    with pytest.raises(InputError, match="config is a DistillConfig or a dict"):
        distill([vol], teacher=teacher, out=tmp_path / "x.pt", config=["natural_steps", 2])


def test_a_volume_too_small_for_the_encoder_is_named(tmp_path, teacher):
    tiny = Volume(np.ones((10, 12, 8), np.float32), np.eye(4), path=None)
    with pytest.raises(InputError, match="too small for the encoder: its slices are 5 x 6 voxels at 2 mm"):
        next(
            distill(
                [tiny], natural=False, teacher=teacher, out=tmp_path / "x.pt", config={"device": "cpu"}, events=True
            )
        )


def test_cli_distill_with_the_real_litemedsam_teacher(tmp_path, monkeypatch, capsys):
    """End to end from the terminal: bundled teacher, two photographs, two slices of the sample atlas."""
    from napari_rrl_medsam.cli import main
    from napari_rrl_medsam.data.sample import SAMPLE_DIR

    monkeypatch.setenv("RRL_MEDSAM_CACHE", str(tmp_path / "cache"))
    photos = write_photos(tmp_path / "photos", (60, 80), ".png")
    out = tmp_path / "enc.pt"
    args = [
        "distill",
        str(SAMPLE_DIR / "images" / "atlas.nii.gz"),
        "--natural",
        str(photos),
        "--teacher",
        "litemedsam",
        "--out",
        str(out),
        "--natural-steps",
        "1",
        "--medical-steps",
        "1",
        "--batch-size",
        "2",
        "--slices-per-volume",
        "2",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    encoder = load_encoder(out)
    assert encoder.teacher["name"] == "litemedsam" and encoder.teacher["id"].startswith("litemedsam-79d8c9dca6db")
    assert main(args) == 2 and "--resume" in capsys.readouterr().err  # no silent overwrite


def test_the_shipped_encoder_loads_offline_and_fits_the_budget():
    from napari_rrl_medsam.api import load_encoder as load_shipped
    from napari_rrl_medsam.core.models.encoder import MAX_PARAMS, count_parameters

    encoder = load_shipped()
    assert count_parameters(encoder) <= MAX_PARAMS == 2_690_127
    assert encoder.teacher["name"] == "litemedsam" and encoder.steps == 1200
    with torch.no_grad():
        out = encoder(torch.rand(1, 3, 256, 256))
    assert out.shape == (1, 256, 64, 64) and torch.isfinite(out).all()


def test_medical_batches_replay_photographs(tmp_path, teacher, images, monkeypatch):
    natural, medical = images
    seen = []
    from napari_rrl_medsam.core.engines import distill as engine

    real = engine._augment
    monkeypatch.setattr(engine, "_augment", lambda x, gen: seen.append(x.clone()) or real(x, gen))
    cfg = config(natural_steps=1, medical_steps=2, batch_size=4, replay=0.5)
    list(distill_engine(teacher, natural, medical, tmp_path / "r.pt", cfg, cache=EmbeddingCache(tmp_path)))

    def from_set(x, data):
        return sum(any(torch.equal(row, d) for d in data) for row in x)

    assert from_set(seen[0], natural) == 4  # stage 1: photographs only
    for batch in seen[1:]:  # stage 2: half slices, half photographs
        assert from_set(batch, medical) == 2 and from_set(batch, natural) == 2


@pytest.mark.parametrize("freeze", [False, True])
def test_freeze_norm_keeps_stage_1_batch_norm_statistics_in_stage_2(tmp_path, teacher, images, freeze):
    natural, medical = images
    cache = EmbeddingCache(tmp_path)

    def running_stats(path):
        state = load_checkpoint(path, "distill")["encoder"]
        return {k: v for k, v in state.items() if k.endswith(("running_mean", "running_var"))}

    list(distill_engine(teacher, natural, medical, tmp_path / "s1.pt", config(medical_steps=0), cache=cache))
    (tmp_path / "s2.pt").write_bytes((tmp_path / "s1.pt").read_bytes())
    list(
        distill_engine(
            teacher, natural, medical * 0.2, tmp_path / "s2.pt", config(freeze_norm=freeze), resume=True, cache=cache
        )
    )
    before, after = running_stats(tmp_path / "s1.pt"), running_stats(tmp_path / "s2.pt")
    same = all(torch.equal(before[k], after[k]) for k in before)
    assert same == freeze
    assert load_checkpoint(tmp_path / "s2.pt", "distill")["step"] == 6  # stage 2 trained either way
