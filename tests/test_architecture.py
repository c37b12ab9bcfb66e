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
