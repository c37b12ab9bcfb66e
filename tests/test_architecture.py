"""The layering DESIGN.md asks for, checked on the source: the faces speak to the core only through the api."""

import ast
import os
from pathlib import Path

import napari_rrl_medsam

PACKAGE = Path(napari_rrl_medsam.__file__).parent
FACES = [PACKAGE / name for name in ("cli.py", "_reader.py", "_writer.py", "_sample_data.py")]
FACES += sorted((PACKAGE / "_widgets").glob("*.py"))


def _imported_modules(source: str, package: list[str]) -> list[str]:
    """Absolute names of the modules a module of `package` (its dotted parts) imports, relative imports resolved."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            names.append(".".join([*base, node.module or ""]).rstrip("."))
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return names


def test_faces_import_nothing_from_the_core():
    reaching = {
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in FACES
        for name in _imported_modules(path.read_text(), [PACKAGE.name, *path.parent.relative_to(PACKAGE).parts])
        if name == "napari_rrl_medsam.core" or name.startswith("napari_rrl_medsam.core.")
    }
    assert not reaching, f"faces must import the api, not the core: {sorted(reaching)}"


def test_the_import_check_sees_relative_and_absolute_core_imports():
    source = "from ..core.volume import Volume\nimport napari_rrl_medsam.core.io\nfrom ..api import segment\n"
    assert _imported_modules(source, ["napari_rrl_medsam", "_widgets"]) == [
        "napari_rrl_medsam.core.volume",
        "napari_rrl_medsam.core.io",
        "napari_rrl_medsam.api",
    ]
    assert _imported_modules("from .core import io\n", ["napari_rrl_medsam"]) == ["napari_rrl_medsam.core"]


def test_set_cache_dir_points_the_teacher_cache_there(tmp_path, monkeypatch):
    from napari_rrl_medsam import api
    from napari_rrl_medsam.core.files import CACHE_ENV

    monkeypatch.delenv(CACHE_ENV, raising=False)
    api.set_cache_dir(tmp_path / "cache")
    assert os.environ[CACHE_ENV] == str(tmp_path / "cache")


def test_the_api_is_one_function_per_training_stage_with_documented_arguments():
    """Issue 16's readable api: one trainer per stage, taking the atlas as a pair and settings as a config (no
    opaque **settings), and every public function's arguments documented (`Args:`)."""
    import inspect

    from napari_rrl_medsam import api

    trainers = {"distill", "train_registration", "cotrain", "train_one_shot"}
    assert not {n for n in api.__all__ if n.endswith(("trainer", "distiller"))}  # no second form per stage
    for name in trainers:
        parameters = inspect.signature(getattr(api, name)).parameters
        assert {"config", "events"} <= set(parameters) or {"registration", "cotrain", "events"} <= set(parameters)
        assert not [p for p in parameters.values() if p.kind is p.VAR_KEYWORD], name
        assert "atlas_labels" not in parameters, name  # the atlas is one argument, as in register and segment
    undocumented = []
    for name in api.__all__:
        value = getattr(api, name)
        if inspect.isfunction(value) and inspect.signature(value).parameters:
            if "Args:" not in (inspect.getdoc(value) or ""):
                undocumented.append(name)
    assert not undocumented, f"public api functions without an Args: section: {undocumented}"


def test_configs_are_given_as_objects_or_dicts_and_a_wrong_field_names_the_right_ones():
    import pytest

    from napari_rrl_medsam import api
    from napari_rrl_medsam.api.training import make_config

    given = api.CotrainConfig(steps=7)
    made = make_config("cotrain", given)
    assert made.steps == 7 and made is not given  # a copy: the caller's object is never changed
    assert make_config("registration", {"steps": 3}).steps == 3
    assert make_config("distill", None).natural_steps == api.defaults("distill")["natural_steps"]
    with pytest.raises(api.InputError, match="CotrainConfig fields are: .*steps"):
        make_config("cotrain", {"stepz": 3})
    with pytest.raises(api.InputError, match="config is a RegistrationTrainConfig or a dict"):
        make_config("registration", api.CotrainConfig())
