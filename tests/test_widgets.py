"""The three dock widgets in a real napari viewer (Xvfb), opened through the plugin manifest, on tiny runs."""

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from test_distill import TINY, CountingConv
from test_registration import phantom

from napari_rrl_medsam import api
from napari_rrl_medsam._reader import layer_data
from napari_rrl_medsam.core.checkpoint import load_checkpoint
from napari_rrl_medsam.core.engines.distill import DistillConfig, distill_engine
from napari_rrl_medsam.core.models.encoder import EncoderConfig
from napari_rrl_medsam.core.models.registration import RegistrationConfig
from napari_rrl_medsam.core.teachers import Teacher

PLUGIN = "napari-rrl-medsam"
WIDGETS = ("One-shot training", "Register and segment", "Encoder distillation (DSKD)", "Correct with box prompts")
LONG = 120_000  # ms: generous, the machine is shared
TINY_REGISTRATION = dict(
    lr=3e-3,
    smooth_weight=0.5,
    ncc_kernel=5,
    augment=False,
    checkpoint_every=2,
    preview_every=1,
    network=RegistrationConfig(channels=(4, 8, 8, 8), integration_steps=4),
)
TINY_COTRAIN = dict(decoder_width=8, checkpoint_every=2, preview_every=1, validate_every=2, lr=3e-3)


@pytest.fixture(autouse=True)
def private_dirs(tmp_path, monkeypatch):
    """Settings and caches go to the test's folder, never the real home."""
    monkeypatch.setenv("RRL_MEDSAM_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("RRL_MEDSAM_CACHE", str(tmp_path / "cache"))


def tiny_teacher():
    return Teacher(CountingConv(), "tiny", "random" * 4, input_size=32)


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    """A real distillation checkpoint of a tiny encoder (one step from a tiny random teacher)."""
    from napari_rrl_medsam.core.cache import EmbeddingCache

    tmp = tmp_path_factory.mktemp("encoder")
    config = DistillConfig(
        natural_steps=1, medical_steps=0, batch_size=2, device="cpu", encoder=EncoderConfig(**TINY.to_dict())
    )
    natural = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    list(distill_engine(tiny_teacher(), natural, None, tmp / "tiny_encoder.pt", config, cache=EmbeddingCache(tmp)))
    return tmp / "tiny_encoder.pt"


def add(viewer, volume, name):
    data, kwargs, kind = layer_data(volume, name)
    return getattr(viewer, f"add_{kind}")(data, **kwargs)


def open_widget(viewer, name):
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def wait_done(qtbot, widget, timeout=LONG):
    qtbot.waitUntil(lambda: widget.worker is None, timeout=timeout)


@pytest.fixture
def notifications():
    from napari.utils.notifications import notification_manager

    seen = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


@pytest.fixture
def dskd_widget(make_napari_viewer, tmp_path, monkeypatch):
    """A DSKD widget with a tiny teacher and student on one phantom scan, writing `tmp_path/enc.pt`.

    The tiny teacher is patched into this process, so the engine runs in the widget's worker thread here; the
    child process the widget uses by default is tested with the bundled teacher below."""
    monkeypatch.setattr("napari_rrl_medsam.core.teachers.get_teacher", lambda *a, **k: tiny_teacher())
    viewer = make_napari_viewer()
    widget = open_widget(viewer, "Encoder distillation (DSKD)")
    widget.in_subprocess = False
    f = widget.form
    f.volumes.value = [add(viewer, phantom()[0], "scan")]
    f.batch_size.value, f.device.value, f.out.value = 2, "cpu", str(tmp_path / "enc.pt")
    widget.advanced = {"encoder": EncoderConfig(**TINY.to_dict()), "checkpoint_every": 1, "slices_per_volume": 4}
    return viewer, widget


def test_dskd_widget_runs_to_completion_with_a_live_layer(dskd_widget, qtbot, tmp_path):
    viewer, widget = dskd_widget
    widget.form.natural_steps.value, widget.form.medical_steps.value = 2, 2
    shots = []
    name = "DSKD: student embedding (a slice)"
    widget.shown.connect(
        lambda e: name in viewer.layers and shots.append((viewer.layers[name], viewer.layers[name].data.copy()))
    )
    widget.start()
    wait_done(qtbot, widget)
    assert widget.failed is None
    state = load_checkpoint(tmp_path / "enc.pt", "distill")
    assert state["step"] == 4 and state["complete"]
    assert len(shots) >= 4 and len({id(layer) for layer, _ in shots}) == 1  # one layer, updated in place
    assert not np.array_equal(shots[0][1], shots[-1][1])  # it changed as the student learnt
    assert [layer.name for layer in widget.form.volumes.choices] == ["scan"]  # the 2D preview is no volume
    assert set(widget.plot.series) >= {"loss", "mse", "cosine"} and len(widget.plot.series["loss"]) == 4
    assert "finished" in widget.status.text() and widget.buttons["Start"].isEnabled()
    settings = json.loads((tmp_path / "config" / "settings.json").read_text())
    assert settings["encoder"] == str(tmp_path / "enc.pt") and settings["device"] == "cpu"
    widget.use_shipped.changed.emit(True)  # the one-click default
    assert json.loads((tmp_path / "config" / "settings.json").read_text())["encoder"] is None


def test_dskd_widget_stop_then_resume_continues_from_the_saved_step(dskd_widget, qtbot, tmp_path):
    _, widget = dskd_widget
    widget.form.natural_steps.value, widget.form.medical_steps.value = 3, 3
    widget.advanced["checkpoint_every"] = 100
    steps = []

    def on_event(e):
        if e.losses:
            steps.append(e.step)
            if len(steps) == 2 and widget.state == "running":
                widget.stop()

    widget.shown.connect(on_event)
    widget.start()
    wait_done(qtbot, widget)
    saved = load_checkpoint(tmp_path / "enc.pt", "distill")
    assert 2 <= saved["step"] < 6 and not saved["complete"]  # stopped before the end, resumable
    assert "stopped" in widget.status.text() and widget.buttons["Resume"].isEnabled()
    widget.shown.disconnect(on_event)
    resumed = []
    widget.shown.connect(lambda e: e.losses and resumed.append(e.step))
    widget.buttons["Resume"].click()
    wait_done(qtbot, widget)
    assert widget.failed is None
    assert resumed[0] == saved["step"] + 1 and resumed[-1] == 6 and len(resumed) == 6 - saved["step"]
    assert load_checkpoint(tmp_path / "enc.pt", "distill")["complete"]


def test_dskd_widget_trains_in_a_child_process_with_the_bundled_teacher(make_napari_viewer, qtbot, tmp_path):
    """The default path: LiteMedSAM teacher, the engine in a child process; its cache folder is the form's."""
    from test_distill import write_photos

    viewer = make_napari_viewer()
    widget = open_widget(viewer, "Encoder distillation (DSKD)")
    assert widget.in_subprocess
    f = widget.form
    f.teacher.value, f.natural.value = "litemedsam", write_photos(tmp_path / "photos", (60, 80), ".png")
    f.volumes.value = [add(viewer, phantom()[0], "scan")]
    f.natural_steps.value, f.medical_steps.value, f.batch_size.value, f.device.value = 1, 1, 2, "cpu"
    f.cache_dir.value, f.out.value = tmp_path / "my-cache", tmp_path / "enc.pt"
    widget.advanced = {"encoder": EncoderConfig(**TINY.to_dict()), "checkpoint_every": 1, "slices_per_volume": 2}
    previews = []
    widget.shown.connect(lambda e: e.preview and previews.append(e.preview["embedding"]))
    widget.start()
    wait_done(qtbot, widget)
    assert widget.failed is None
    state = load_checkpoint(tmp_path / "enc.pt", "distill")
    assert state["step"] == 2 and state["complete"] and state["teacher"]["name"] == "litemedsam"
    assert len(previews) == 2 and "DSKD: student embedding (a slice)" in viewer.layers
    assert any((tmp_path / "my-cache").rglob("*.npy"))  # teacher embeddings went to the chosen folder
    assert os.environ["RRL_MEDSAM_CACHE"] == str(tmp_path / "cache")  # ... set in the child, not in napari


@pytest.fixture
def cotrain_widget(make_napari_viewer, tiny_encoder, tmp_path):
    """A co-training widget on tiny phantoms: atlas, its labels, two unlabelled volumes, a validation pair."""
    viewer = make_napari_viewer()
    atlas, labels = phantom()
    layers = {"atlas": add(viewer, atlas, "atlas"), "labels": add(viewer, labels, "atlas labels")}
    unlabelled = [add(viewer, phantom(shift=s)[0], f"t{i}") for i, s in enumerate((1.0, -1.5))]
    val_image, val_labels = phantom(shift=0.5)
    layers.update(val=add(viewer, val_image, "val"), val_labels=add(viewer, val_labels, "val labels"))
    widget = open_widget(viewer, "One-shot training")
    f = widget.form
    f.atlas.value, f.atlas_labels.value, f.unlabelled.value = layers["atlas"], layers["labels"], unlabelled
    f.encoder.value, f.device.value, f.out.value = str(tiny_encoder), "cpu", str(tmp_path / "run")
    f.slab.value, f.image_size.value = 4, 32
    widget.registration_settings, widget.cotrain_settings = dict(TINY_REGISTRATION), dict(TINY_COTRAIN)
    return viewer, widget, layers


def test_cotrain_widget_live_layers_change_in_place(cotrain_widget, qtbot, tmp_path):
    viewer, widget, layers = cotrain_widget
    f = widget.form
    f.val_image.value, f.val_labels.value = layers["val"], layers["val_labels"]
    f.registration_steps.value, f.cotrain_steps.value = 3, 4
    live = [
        "live: current volume",
        "live: warped atlas",
        "live: pseudo labels",
        "live: auto-prompt mask",
        "live: segmentation",
    ]
    seen = []
    widget.shown.connect(
        lambda e: seen.append(
            (e.stage, {n: (id(viewer.layers[n]), viewer.layers[n].data.copy()) for n in live if n in viewer.layers})
        )
    )
    widget.start()
    wait_done(qtbot, widget)
    assert widget.failed is None
    assert [s for s, _ in seen if s in ("registration", "co-training")] == ["registration"] * 3 + ["co-training"] * 4
    final = seen[-1][1]
    assert set(final) == set(live)
    seg = [snap["live: segmentation"] for stage, snap in seen if "live: segmentation" in snap]
    assert len(seg) >= 3 and len({layer_id for layer_id, _ in seg}) == 1  # created once, updated in place

    def changes(name, stage):
        arrays = [snap[name][1] for s, snap in seen if s == stage and name in snap]
        return sum(not np.array_equal(a, b) for a, b in zip(arrays, arrays[1:]))

    assert changes("live: warped atlas", "registration") >= 1  # the registration moves the atlas
    assert changes("live: segmentation", "co-training") >= 1 and changes("live: auto-prompt mask", "co-training") >= 1
    assert not viewer.layers["live: warped atlas"].visible  # it would hide the current volume
    shown = [n for n in live if viewer.layers[n]._type_string == "labels" and viewer.layers[n].visible]
    assert shown == ["live: segmentation"]  # one live labels layer at a time, the others one click away
    index = {layer.name: i for i, layer in enumerate(viewer.layers)}
    labels = [i for i, layer in enumerate(viewer.layers) if layer._type_string == "labels"]
    assert max(index["live: current volume"], index["live: warped atlas"]) < min(labels)  # images under labels
    assert viewer.layers["live: segmentation"].data.shape == (24, 24, 24)
    assert np.allclose(viewer.layers["live: segmentation"].scale, 2.0)  # the 2 mm working grid, in mm
    validation = {"val_dice_registration", "val_dice", "val_dice_general"}
    assert set(widget.plot.series) >= {"loss", "ncc", "smooth", "general", "medical"} | validation
    assert all(0 <= d <= 1 for name in validation for _, d in widget.plot.series[name])
    assert len(widget.plot.series["val_dice"]) == 2  # co-training steps 2 and 4
    state = load_checkpoint(tmp_path / "run" / "rrl_medsam.pt", "rrl-medsam")
    assert state["step"] == 4 and state["complete"]
    assert "rrl_medsam.pt" in widget.checkpoint_label.text()
    assert not widget.buttons["Resume"].isEnabled()  # a finished run has nothing to resume
    verdict = widget.verdict.text()  # which result to trust: the validation Dice side by side
    assert verdict.startswith("Validation Dice on the native grid: registration 0.") and "RRL-MedSAM 0." in verdict
    for result in ("with the registration prior 0.", "with the propagated atlases' prior 0."):  # propagated atlases
        assert result in verdict  # are ticked by default for a one-shot run
    assert "Best: " in verdict
    assert [case.id for case in api.labelled_set(tmp_path / "run" / "propagated")] == ["volume0", "volume1"]
    inference = open_widget(viewer, "Register and segment")  # it points at the run's propagated atlases
    inference.form.model.value, inference.form.device.value = str(tmp_path / "run" / "rrl_medsam.pt"), "cpu"
    inference.form.target.value, inference.form.prior.value = layers["val"], False
    inference.form.segment.changed.emit(True)
    qtbot.waitUntil(lambda: inference.worker is None and "val RRL-MedSAM labels" in viewer.layers, timeout=LONG)
    assert f"This run's propagated atlases are in {tmp_path / 'run' / 'propagated'}" in inference.status.text()
    assert [s for s, _ in seen][-1] == "evaluation" and "Warning: 4 co-training steps" not in verdict
    f.out.value = str(tmp_path / "run2")  # a new run starts with none of the last run's live layers or figures
    widget.start()
    assert not [n for n in live if n in viewer.layers] and widget.checkpoint_label.text() == ""
    assert widget.bar.value() <= 0
    widget.stop()
    wait_done(qtbot, widget)


def test_cotrain_widget_pause_stop_and_resume(cotrain_widget, qtbot, tmp_path):
    viewer, widget, _ = cotrain_widget
    widget.form.registration_steps.value, widget.form.cotrain_steps.value = 2, 8
    widget.form.val_image.value = widget.form.val_labels.value = None  # no validation pair
    steps = []

    def on_event(e):
        if e.stage == "co-training":
            steps.append(e.step)
            if e.step == 2 and widget.state == "running":
                widget.pause()

    widget.shown.connect(on_event)
    widget.start()
    qtbot.waitUntil(lambda: widget.state == "paused", timeout=LONG)
    paused_at = len(steps)
    qtbot.wait(700)
    assert len(steps) == paused_at  # nothing runs while paused
    assert widget.buttons["Resume"].isEnabled() and not widget.buttons["Pause"].isEnabled()
    assert widget.status.text().startswith(f"paused at co-training step {steps[-1]}/8: Resume continues")
    widget.stop()  # Stop while paused: the engine is closed and saves its checkpoint
    wait_done(qtbot, widget)
    saved = load_checkpoint(tmp_path / "run" / "rrl_medsam.pt", "rrl-medsam")
    assert saved["step"] == steps[-1] < 8 and not saved["complete"]
    assert "stopped" in widget.status.text() and widget.buttons["Resume"].isEnabled()
    resumed = []
    widget.shown.disconnect(on_event)
    widget.shown.connect(lambda e: e.stage in ("registration", "co-training") and resumed.append(e))
    widget.buttons["Resume"].click()
    wait_done(qtbot, widget)
    assert [e.stage for e in resumed] == ["co-training"] * (8 - saved["step"])  # registration was complete
    assert [e.step for e in resumed] == list(range(saved["step"] + 1, 9))
    assert load_checkpoint(tmp_path / "run" / "rrl_medsam.pt", "rrl-medsam")["complete"]
    assert not widget.buttons["Resume"].isEnabled() and widget.buttons["Start"].isEnabled()
    from napari_rrl_medsam.api import QUICK

    quick = QUICK["cotrain"]["steps"]
    assert widget.verdict.text().startswith(f"Warning: 8 co-training steps are fewer than the quick budget's {quick}")
    assert "No validation volume was given" in widget.verdict.text()
    assert f"The propagated atlases are in {tmp_path / 'run' / 'propagated'}" in widget.verdict.text()
    from napari_rrl_medsam.core.engines.events import Progress

    metrics = {"dice_registration": 0.731, "dice_model": 0.776, "dice_prior": 0.794, "dice_propagated": 0.779}
    widget.show_evaluation(Progress("evaluation", 1, 1, metrics=metrics))  # the demo model's figures on target03
    assert widget.verdict.text() == (
        "Validation Dice on the native grid: registration 0.731, RRL-MedSAM 0.776, with the registration prior 0.794, "
        "with the propagated atlases' prior 0.779. Best: with the registration prior: Segment with rrl_medsam.pt and "
        "the registration prior ticked (Register and segment)."
    )
    widget.show_evaluation(Progress("evaluation", 1, 1, metrics={**metrics, "dice_propagated": 0.8}))
    assert widget.verdict.text().endswith(f"the labelled set {tmp_path / 'run' / 'propagated'}.")


def test_a_worker_error_is_a_notification_and_the_widget_stays_usable(
    cotrain_widget, qtbot, tmp_path, notifications, tiny_encoder
):
    viewer, widget, _ = cotrain_widget
    bad = tmp_path / "bad_encoder.pt"
    bad.write_bytes(b"not a checkpoint")
    widget.form.encoder.value = str(bad)
    widget.form.registration_steps.value, widget.form.cotrain_steps.value = 1, 1
    widget.start()
    wait_done(qtbot, widget)
    errors = [n for n in notifications if "co-training failed" in str(n.message)]
    assert errors and "bad_encoder.pt" in str(errors[0].message)  # the cause, naming the file
    assert widget.state == "idle" and widget.buttons["Start"].isEnabled() and widget.form.enabled
    widget.form.encoder.value = str(tiny_encoder)  # fixed: the same widget runs
    widget.start()
    wait_done(qtbot, widget)
    assert widget.failed is None and (tmp_path / "run" / "rrl_medsam.pt").exists()


@pytest.fixture(scope="module")
def sample_model(tmp_path_factory):
    """A (barely trained) co-trained model on the bundled sample: enough to check geometry end to end."""
    from napari_rrl_medsam import api

    tmp = tmp_path_factory.mktemp("model")
    task = api.sample_task(check=False)
    task.unlabelled = task.unlabelled[:1]
    network = RegistrationConfig(channels=(4, 8, 8, 8), integration_steps=4)
    reg = api.train_registration(
        task,
        out=tmp / "reg.pt",
        config=api.RegistrationTrainConfig(steps=1, use_features=False, device="cpu", network=network),
        progress=False,
    )
    model = api.cotrain(
        task,
        registration=reg,
        out=tmp / "model.pt",
        config={"steps": 1, "slab": 4, "image_size": 32, "decoder_width": 8, "use_dskd": False, "device": "cpu"},
        progress=False,
    )
    return Path(model.source)


def test_inference_on_the_sample_keeps_the_source_geometry(make_napari_viewer, qtbot, tmp_path, sample_model):
    from napari_rrl_medsam.data.sample import SAMPLE_DIR

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "oneshot_brain")
    widget = open_widget(viewer, "Register and segment")
    f = widget.form
    target = viewer.layers["target02"]  # stored LIA on disk
    f.model.value, f.device.value = str(sample_model), "cpu"
    f.atlas.value, f.atlas_labels.value, f.target.value = (
        viewer.layers["atlas"],
        viewer.layers["atlas labels"],
        target,
    )
    f.register.changed.emit(True)
    qtbot.waitUntil(lambda: widget.worker is None and "target02 pseudo labels" in viewer.layers, timeout=LONG)
    kinds = [layer._type_string for layer in viewer.layers]
    assert kinds == sorted(kinds)  # every image under every labels layer: the pseudo labels are seen
    for derived in ("warped atlas", "displacement mm", "Jacobian determinant"):
        assert not viewer.layers[f"target02 {derived}"].visible  # derived maps: hidden, one click away
    assert viewer.layers["target02 pseudo labels"].visible and f.prediction.value.name == "target02 pseudo labels"
    f.segment.changed.emit(True)
    qtbot.waitUntil(lambda: widget.worker is None and "target02 RRL-MedSAM labels" in viewer.layers, timeout=LONG)
    for name, kind in (
        ("warped atlas", "image"),
        ("displacement mm", "image"),
        ("Jacobian determinant", "image"),
        ("pseudo labels", "labels"),
        ("RRL-MedSAM labels", "labels"),
        ("auto-prompt", "labels"),
    ):
        layer = viewer.layers[f"target02 {name}"]
        assert layer._type_string == kind and layer.data.shape == target.data.shape
        assert np.allclose(layer.scale, (1.5, 1.5, 1.5)) and np.allclose(layer.translate, target.translate)
        assert np.array_equal(layer.metadata["source_affine"], target.metadata["source_affine"])
    labels = viewer.layers["target02 RRL-MedSAM labels"]
    assert labels.visible and not viewer.layers["target02 pseudo labels"].visible
    assert not viewer.layers["target02 auto-prompt"].visible and f.prediction.value is labels
    assert set(np.unique(labels.data)) <= set(np.unique(viewer.layers["atlas labels"].data))
    assert viewer.layers["target02 displacement mm"].data.max() > 0
    # Segment with the registration prior: the fused labels move toward the warped atlas labels
    pseudo, unfused = viewer.layers["target02 pseudo labels"].data, labels.data.copy()
    f.prior.value = True
    f.segment.changed.emit(True)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=LONG)
    fused = viewer.layers["target02 RRL-MedSAM + prior labels"].data  # a layer of its own
    assert np.array_equal(labels.data, unfused) and not labels.visible
    assert np.mean(fused == pseudo) > np.mean(unfused == pseudo)
    f.prior.value = False
    # Segment mirrored: what api.segment(mirror=FreeSurfer's pairs) gives, placed like the target
    f.mirror.value = True
    f.segment.changed.emit(True)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=LONG)
    from napari_rrl_medsam._widgets.layers import like_layer, to_volume
    from napari_rrl_medsam.api import FREESURFER_LEFT_RIGHT, load_model, segment

    expected = segment(load_model(sample_model, "cpu"), to_volume(target), mirror=FREESURFER_LEFT_RIGHT).labels
    mirrored = viewer.layers["target02 RRL-MedSAM labels"].data
    assert np.array_equal(mirrored, like_layer(expected, target, "x", "labels")[0])
    assert not np.array_equal(mirrored, unfused)
    f.mirror.value = False
    # a registration model cannot segment: said in the widget's words
    f.model.value = sample_model.parent / "reg.pt"
    f.segment.changed.emit(True)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=LONG)
    assert "reg.pt is a registration model" in widget.status.text() and "rrl_medsam.pt" in widget.status.text()
    f.model.value = sample_model
    out = tmp_path / "target02_labels.nii.gz"
    (truth,) = viewer.open(str(SAMPLE_DIR / "labels" / "target02.nii.gz"), plugin=PLUGIN)
    assert to_volume(truth).name == "target02"  # a layer read from a file is named after it
    f.prediction.value, f.truth.value = viewer.layers["target02 pseudo labels"], truth
    f.evaluate.changed.emit(True)
    qtbot.waitUntil(lambda: widget.worker is None and widget.evaluation is not None, timeout=LONG)
    assert len(widget.evaluation.labels) == 17 and 0 < widget.evaluation.mean_dice < 1
    assert widget.table.item(1, 1).text() == "Left-Cerebral-White-Matter"  # names from the sample's dataset.json
    viewer.layers.selection = {labels}
    viewer.layers.save(str(out), selected=True, plugin=PLUGIN)  # through the plugin's writer
    source = nib.load(SAMPLE_DIR / "images" / "target02.nii.gz")
    saved = nib.load(out)
    assert np.array_equal(saved.affine, source.affine) and saved.shape == source.shape


def test_register_with_a_labelled_set_fuses_every_labelled_volume(make_napari_viewer, qtbot, tmp_path, sample_model):
    """The correction widget's labelled set feeds Register: target03 and its true labels added to the set, then
    registered (with the atlas) onto target03 itself; the locally weighted vote follows the identical volume."""
    from napari_rrl_medsam import api

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "oneshot_brain")
    correct = open_widget(viewer, "Correct with box prompts")
    correct.form.image_layer.value, correct.form.labels_layer.value = (
        viewer.layers["target03"],
        viewer.layers["target03 labels"],
    )
    correct.form.labelled_set.value = str(tmp_path / "set")
    assert correct.form.volume_name.value == "target03"
    correct.add_to_set()
    assert correct.labelled.text() == "labelled set: 1 volume: target03"
    assert [c.id for c in api.labelled_set(tmp_path / "set")] == ["target03"]
    widget = open_widget(viewer, "Register and segment")
    f = widget.form
    f.model.value, f.device.value, f.refine_steps.value = str(sample_model), "cpu", 0
    f.atlas.value, f.atlas_labels.value = viewer.layers["atlas"], viewer.layers["atlas labels"]
    f.target.value = viewer.layers["target03"]
    assert f.labelled_set.value is not None  # the correction widget's set is remembered; first without it
    f.labelled_set.value = None
    truth = np.asarray(viewer.layers["target03 labels"].data)
    f.register.changed.emit(True)
    qtbot.waitUntil(lambda: widget.worker is None and "target03 pseudo labels" in viewer.layers, timeout=LONG)
    single = np.asarray(viewer.layers["target03 pseudo labels"].data).copy()
    f.labelled_set.value = str(tmp_path / "set")
    f.register.changed.emit(True)
    qtbot.waitUntil(lambda: widget.worker is None and "2 labelled volumes" in widget.status.text(), timeout=LONG)
    fused = np.asarray(viewer.layers["target03 pseudo labels"].data)
    agree = lambda a: (a == truth)[truth > 0].mean()  # noqa: E731
    assert agree(fused) > 0.9 and agree(fused) > agree(single) + 0.1
    f.prior.value = True  # Segment with the registration prior: the labelled set's labels fused into it too
    f.segment.changed.emit(True)
    qtbot.waitUntil(lambda: widget.worker is None and "prior of 2 atlases" in widget.status.text(), timeout=LONG)
    assert agree(np.asarray(viewer.layers["target03 RRL-MedSAM + prior labels"].data)) > 0.8


def test_choosers_offer_what_fits_and_default_to_the_next_step(make_napari_viewer, qtbot, tmp_path, notifications):
    from napari_rrl_medsam._widgets.layers import like_layer, to_volume

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "oneshot_brain")
    widget = open_widget(viewer, "Register and segment")
    f = widget.form
    assert (f.atlas.value.name, f.atlas_labels.value.name, f.target.value.name) == ("atlas", "atlas labels", "target01")
    assert "atlas" not in [layer.name for layer in f.target.choices]  # never its own target
    assert f.truth.value.name == "target03 labels"  # not the atlas's
    # a widget's outputs are never offered as inputs; the newest result is the prediction
    like = viewer.layers["target01"]
    widget.show_result(
        like_layer(to_volume(viewer.layers["atlas labels"]), like, "target01 pseudo labels", "labels"), like
    )
    assert f.prediction.value.name == "target01 pseudo labels"
    assert "target01 pseudo labels" not in [x.name for x in f.truth.choices + f.atlas_labels.choices]
    training = open_widget(viewer, "One-shot training")
    g = training.form
    assert [x.name for x in g.unlabelled.choices] == ["target01", "target02", "target03"]
    assert (g.val_image.value.name, g.val_labels.value.name) == ("target03", "target03 labels")
    # a label map opened as an image is refused where an image is asked for, in words the user can act on
    scale = viewer.layers["atlas"].scale
    as_image = viewer.add_image(viewer.layers["atlas labels"].data.astype(np.int16), name="seg as image", scale=scale)
    f.model.value, f.target.value = tmp_path / "model.pt", as_image
    f.segment.changed.emit(True)
    errors = [str(n.message) for n in notifications if "looks like a label map" in str(n.message)]
    assert errors and "'seg as image'" in errors[0] and "Convert to Labels" in errors[0] and widget.worker is None


def test_every_field_has_a_tooltip(make_napari_viewer):
    from magicgui.widgets import PushButton

    viewer = make_napari_viewer()
    for name in WIDGETS:
        form = open_widget(viewer, name).form
        missing = [w.name for w in form if not isinstance(w, PushButton) and not w.tooltip]
        assert not missing, f"{name}: no tooltip on {missing}"


def test_evaluate_gives_the_expected_dice_and_exports_csv(make_napari_viewer, qtbot, tmp_path):
    truth = np.zeros((20, 20, 20), np.uint8)
    truth[2:8, 2:8, 2:8] = 1
    truth[10:18, 10:18, 10:18] = 2
    pred = truth.copy()
    pred[10:14, 10:18, 10:18] = 0  # structure 2 half covered: Dice = 2 * 256 / (256 + 512) = 2/3
    viewer = make_napari_viewer()
    viewer.add_labels(truth, name="truth", scale=(1.5, 1.5, 1.5))
    viewer.add_labels(pred, name="prediction", scale=(1.5, 1.5, 1.5))
    widget = open_widget(viewer, "Register and segment")
    widget.form.prediction.value, widget.form.truth.value = viewer.layers["prediction"], viewer.layers["truth"]
    widget.form.evaluate.changed.emit(True)
    qtbot.waitUntil(lambda: widget.evaluation is not None and widget.worker is None, timeout=LONG)
    assert widget.evaluation.dice[1] == pytest.approx(1.0) and widget.evaluation.dice[2] == pytest.approx(2 / 3)
    table = [[widget.table.item(r, c).text() for c in range(4)] for r in range(widget.table.rowCount())]
    assert table[0][0] == "mean" and table[0][2] == "0.833"  # the mean first, always in view
    assert table[2][0] == "2" and table[2][2] == "0.667"
    assert float(table[2][3]) > 0  # HD95 in mm of the half-missed structure
    csv = widget.export_csv(tmp_path / "scores.csv")
    assert csv.read_text().splitlines()[2].startswith("2,,0.666")


def test_widgets_are_in_the_layers_segment_menu_and_follow_the_layers(make_napari_viewer, qtbot):
    import gc
    import weakref

    from napari._app_model import get_app_model

    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Register and segment")
    image = viewer.add_image(np.zeros((4, 4, 4), np.float32), name="a")
    assert widget.form.atlas.choices == (image,) and widget.form.target.choices == ()  # the atlas is no target
    image.name = "b"
    assert widget.form.atlas.native.itemText(0) == "b"
    viewer.window.remove_dock_widget(dock)
    alive = weakref.ref(widget)
    del widget, dock
    gc.collect()
    assert alive() is None  # the viewer's layer events do not keep a closed widget alive
    viewer.add_labels(np.zeros((4, 4, 4), np.uint8))
    items = get_app_model().menus.get_menu("napari/layers/segment")
    titles = {getattr(item, "command", None) and item.command.title for item in items}
    assert {f"{name} (RRL-MedSAM)" for name in WIDGETS} <= titles


def test_widgets_open_at_once_and_load_torch_in_the_background_without_crashing(tmp_path):
    """Opening a widget imports no torch on the main thread (it froze the viewer for seconds): the forms are up at
    once, the status says torch is loading, a worker thread imports it. Importing torch's stack after napari made
    its OpenGL context (Mesa llvmpipe under Xvfb) used to kill the process: Triton's LLVM. A fresh process,
    because this one imported torch long before any viewer."""
    import os
    import subprocess
    import sys

    code = (
        "import sys, time, napari, numpy as np\n"
        "from qtpy.QtWidgets import QApplication\n"
        "from napari_rrl_medsam._widgets import torch_import\n"
        "viewer = napari.Viewer()\n"
        "viewer.add_image(np.zeros((8, 8, 8), np.float32))\n"
        "QApplication.processEvents()  # the canvas is drawn: the GL context exists\n"
        "torch_import._lock.acquire()  # the background import waits until the widgets are checked\n"
        "names = ('One-shot training', 'Register and segment', 'Encoder distillation (DSKD)')\n"
        "docks = [viewer.window.add_plugin_dock_widget('napari-rrl-medsam', n)[1] for n in names]\n"
        "time.sleep(0.5)\n"
        "QApplication.processEvents()  # the background workers have started\n"
        "assert 'torch' not in sys.modules and 'monai' not in sys.modules, 'a widget imported torch'\n"
        "assert all(d.status.text() == torch_import.LOADING for d in docks), [d.status.text() for d in docks]\n"
        "assert docks[0].buttons['Start'].isEnabled()  # the form can be used meanwhile\n"
        "torch_import._lock.release()\n"
        "deadline = time.time() + 200\n"
        "while any(d.status.text() == torch_import.LOADING for d in docks) and time.time() < deadline:\n"
        "    QApplication.processEvents()\n"
        "    time.sleep(0.02)\n"
        "assert [d.status.text() for d in docks] == ['idle', '', 'idle'], [d.status.text() for d in docks]\n"
        "assert torch_import.torch_loaded() and sys.modules.get('triton', 0) is not None\n"
        "viewer.close()\n"
        "print('alive')\n"
    )
    env = {**os.environ, "RRL_MEDSAM_CONFIG_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and "alive" in result.stdout, result.stderr[-2000:]


def test_each_setting_has_one_default_that_every_face_reads(make_napari_viewer):
    import inspect

    from napari_rrl_medsam import api
    from napari_rrl_medsam.cli import build_parser

    viewer = make_napari_viewer()
    cotrain, recipe = open_widget(viewer, "One-shot training").form, api.defaults("cotrain")
    assert (cotrain.registration_steps.value, cotrain.cotrain_steps.value, cotrain.image_size.value) == (
        api.QUICK["registration"]["steps"],
        api.QUICK["cotrain"]["steps"],
        api.QUICK["cotrain"]["image_size"],
    )
    assert cotrain.slab.value == recipe["slab"] and str(recipe["steps"]) in cotrain.cotrain_steps.tooltip
    dskd, distill = open_widget(viewer, "Encoder distillation (DSKD)").form, api.defaults("distill")
    assert (dskd.natural_steps.value, dskd.medical_steps.value, dskd.batch_size.value) == (
        distill["natural_steps"],
        distill["medical_steps"],
        distill["batch_size"],
    )
    inference = open_widget(viewer, "Register and segment").form
    assert inference.refine_steps.value == api.REFINE_STEPS == recipe["refine_steps"]
    assert inspect.signature(api.register).parameters["refine_steps"].default == api.REFINE_STEPS
    assert inspect.signature(api.segment).parameters["prior_weight"].default == api.PRIOR_WEIGHT
    demo = build_parser().parse_args(["demo"])
    assert (demo.registration_steps, demo.cotrain_steps, demo.image_size, demo.refine_steps) == (
        api.QUICK["registration"]["steps"],
        api.QUICK["cotrain"]["steps"],
        api.QUICK["cotrain"]["image_size"],
        api.REFINE_STEPS,
    )
    segment = build_parser().parse_args(["segment", "x.nii.gz", "--model", "m.pt", "--out", "o"])
    assert (segment.prior_weight, segment.refine_steps) == (api.PRIOR_WEIGHT, api.REFINE_STEPS)
    assert segment.precision == "auto" == inspect.signature(api.load_model).parameters["precision"].default
    assert api.defaults("registration")["steps"] == 1000 and recipe["steps"] == 3300  # the recipe's, not a face's
    assert recipe["amp"] and not api.defaults("registration")["amp"]  # co-training in mixed precision by default
    cotrain_cli = ["cotrain", "t.json", "--registration", "r.pt"]
    assert build_parser().parse_args([*cotrain_cli, "--no-amp"]).amp is False
    assert build_parser().parse_args(cotrain_cli).amp is None  # not given: the config's default
    with pytest.raises(api.InputError, match="stage"):
        api.defaults("segment")


def test_the_plot_has_a_panel_per_stage_in_words_a_user_knows_and_draws_a_single_point(qtbot):
    from napari_rrl_medsam._widgets.plot import LivePlot, display_name

    plot = LivePlot("one-shot training")
    qtbot.addWidget(plot)
    plot.resize(420, 400)
    plot.add(1, {"loss": -0.3, "ncc": -0.31, "smooth": 0.01}, "registration")
    plot.add(2, {"loss": -0.35, "ncc": -0.36, "smooth": 0.012}, "registration")
    plot.add(1, {"loss": 5.0, "general": 2.5, "medical": 2.5}, "co-training")
    plot.add(2, {"loss": 4.0, "general": 2.0, "medical": 2.0}, "co-training")
    assert list(plot.stages) == ["registration", "co-training"]  # one panel each: their losses differ in kind
    assert plot.minimumHeight() > 2 * 100
    before = plot.grab().toImage()
    plot.add(2, {"val_dice": 0.61}, "co-training")  # one validation point
    after = plot.grab().toImage()
    assert before != after  # ... is drawn
    assert display_name("val_dice") == "validation Dice, final"
    assert display_name("val_dice_general") == "validation Dice, auto-prompt"
    assert display_name("ncc") == "image similarity (NCC)"
    plot.clear()
    assert not plot.stages and not plot.series


def test_three_docks_fit_a_1600_by_1000_screen(make_napari_viewer, qtbot):
    """Each widget scrolls inside its dock instead of growing the window (three stacked made it 2,100 px tall)."""
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "oneshot_brain")
    window = viewer.window._qt_window
    for name in ("One-shot training", "Register and segment", "Encoder distillation (DSKD)"):
        assert open_widget(viewer, name).minimumSizeHint().height() < 200
    assert window.minimumSizeHint().height() <= 1000 and window.minimumSizeHint().width() <= 1600


def test_correct_a_result_add_it_to_the_labelled_set_and_continue_training(cotrain_widget, qtbot, tmp_path):
    """The few-shot loop in a real viewer: train, correct a segmentation with napari's paint tool, add it to the
    labelled set (correction widget), Continue training (training widget): the finished run fine-tuned with it."""
    viewer, widget, _ = cotrain_widget
    f = widget.form
    f.registration_steps.value, f.cotrain_steps.value = 2, 2
    f.val_image.value = f.val_labels.value = None
    widget.start()
    wait_done(qtbot, widget)
    assert widget.failed is None and not widget.buttons["Continue training"].isEnabled()  # no labelled set yet
    labels = add(viewer, phantom(shift=1.0)[1], "t0 labels")  # t0's segmentation, as Segment would give it
    labels.selected_label, labels.brush_size = 2, 3
    before = labels.data.copy()
    labels.paint((10, 12, 12), 2)  # the user's correction, with napari's own brush
    assert (labels.data != before).any()
    correct = open_widget(viewer, "Correct with box prompts")
    c = correct.form
    c.image_layer.value, c.labels_layer.value, c.labelled_set.value = viewer.layers["t0"], labels, tmp_path / "set"
    c.add.changed.emit(None)  # "Add to labelled set"
    assert correct.labelled.text() == "labelled set: 1 volume: t0"
    f.labelled_set.value = tmp_path / "set"
    assert widget.buttons["Continue training"].isEnabled()
    f.val_image.value, f.val_labels.value = viewer.layers["t0"], labels  # a volume of the labelled set
    assert widget.start(job=widget.continue_job) is None and widget.worker is None  # refused: it is trained on
    assert Path(f.out.value) == tmp_path / "run"
    f.val_image.value = f.val_labels.value = None
    stages = []
    widget.shown.connect(lambda e: stages.append((e.stage, e.step, e.total)))
    widget.buttons["Continue training"].click()
    wait_done(qtbot, widget)
    assert widget.failed is None, widget.failed
    out = tmp_path / "run+1labelled"
    assert Path(f.out.value) == out  # the continued run is the output folder now
    reg, model = load_checkpoint(out / "registration.pt"), load_checkpoint(out / "rrl_medsam.pt")
    assert (reg["step"], model["step"]) == (4, 4) and model["complete"]  # the run's 2 + 2 steps each
    assert len(model["labelled"]) == 2 and model["labelled"][-1] == "t0"  # the atlas and the corrected volume
    assert model["initialised_from"] == str(tmp_path / "run" / "rrl_medsam.pt")
    assert {t for s, _, t in stages if s == "pseudo labels"} == {1}  # t0 is labelled now: only t1 is unlabelled
    assert [s for s, step, _ in stages if s == "co-training"] == ["co-training"] * 2
    assert "live: segmentation" in viewer.layers and widget.plot.series["loss"]  # live layers and the plot, as ever
    assert widget.buttons["Continue training"].isEnabled()  # the continued run can be continued in turn
