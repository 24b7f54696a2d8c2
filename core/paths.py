"""Every filesystem location slopewatch uses, resolved in one place.

Environment variables override the defaults:

* ``SLOPEWATCH_DATA_DIR``: writable state (caches, runs, databases). Default
  ``$XDG_DATA_HOME/slopewatch`` or ``~/.local/share/slopewatch``.
* ``SLOPEWATCH_ASSETS``: the read-only ``assets/`` folder (taxonomy, shipped models, samples).
  Default: ``assets/`` of the source checkout this package was installed from (editable install).
* ``SLOPEWATCH_DATASETS``: where the real inspection datasets live. Default: ``shared/data``
  beside the checkout, which is where the project's CI places them.
* ``SLOPEWATCH_CLIP_MODEL``: an optional CLIP checkpoint folder (transformers ``CLIPModel``).
  No CLIP weights ship; without it the CLIP features stay hidden.
"""

from __future__ import annotations

import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """Writable state directory, created on first use."""
    env = os.environ.get("SLOPEWATCH_DATA_DIR")
    if env:
        path = Path(env).expanduser()
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
        path = base / "slopewatch"
    path.mkdir(parents=True, exist_ok=True)
    return path


def assets_dir() -> Path:
    """Read-only assets shipped with slopewatch."""
    return Path(os.environ.get("SLOPEWATCH_ASSETS") or _REPO_ROOT / "assets")


def datasets_dir() -> Path:
    """Root of the real datasets (``drainage-objects``, ``drainage-conditions``)."""
    return Path(os.environ.get("SLOPEWATCH_DATASETS") or _REPO_ROOT.parent / "shared" / "data")


def default_taxonomy_file() -> Path:
    return assets_dir() / "taxonomy" / "drainage.toml"


def models_manifest() -> Path:
    return assets_dir() / "models" / "manifest.toml"


def samples_dir() -> Path:
    return assets_dir() / "samples"


def ultralytics_config_dir() -> Path:
    """Where ultralytics may write its settings; kept out of the user's home on purpose."""
    path = data_dir() / "ultralytics"
    path.mkdir(parents=True, exist_ok=True)
    return path


def clip_model_dir() -> Path | None:
    """The configured CLIP checkpoint folder, or None when CLIP is not set up."""
    env = os.environ.get("SLOPEWATCH_CLIP_MODEL")
    return Path(env).expanduser() if env else None
