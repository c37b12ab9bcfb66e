"""Widget settings that persist between napari sessions (device, cache folder, last paths).

A small JSON file in the user's config folder (platformdirs, a napari dependency), or in
$RRL_MEDSAM_CONFIG_DIR, which tests and sandboxes set so nothing is written to the real home.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

CONFIG_ENV = "RRL_MEDSAM_CONFIG_DIR"


def settings_path() -> Path:
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV]).expanduser() / "settings.json"
    from platformdirs import user_config_dir

    return Path(user_config_dir("napari-rrl-medsam")) / "settings.json"


def load_settings() -> dict[str, Any]:
    """The saved settings; an unreadable file counts as empty (settings are a convenience, never an error)."""
    try:
        return json.loads(settings_path().read_text())
    except (OSError, ValueError):
        return {}


def save_settings(**updates: Any) -> None:
    """Merge `updates` into the saved settings (written atomically)."""
    path = settings_path()
    data = {**load_settings(), **updates}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


def path_or_none(path) -> str | None:
    """A path as the string the settings file stores (None stays None)."""
    return None if path is None else str(path)


def labelled_set_field(tooltip: str):
    """The *labelled set* folder field the widgets share (one saved setting, "labelled_set"), with the widget's own
    `tooltip`."""
    from magicgui.widgets import FileEdit

    value = load_settings().get("labelled_set")
    return FileEdit(name="labelled_set", label="labelled set", mode="d", nullable=True, value=value, tooltip=tooltip)
