"""Where Language Pipes keeps its files on disk.

Every function reads the environment when it is called (never at import), so a
test or a second node in the same process can point them elsewhere by setting
``LP_APP_DIR`` / ``LP_MODEL_DIR``. Nothing here creates directories.
"""

from __future__ import annotations

import os
from pathlib import Path

APP_DIR_VARIABLE = "LP_APP_DIR"
MODEL_DIR_VARIABLE = "LP_MODEL_DIR"


def _directory_from_environment(variable: str, default: Path) -> Path:
    value = os.environ.get(variable, "").strip()
    return Path(value).expanduser() if value else default.expanduser()


def app_dir() -> Path:
    """Configs, credentials and logs: ``$LP_APP_DIR`` or ``~/.config/language_pipes``."""
    return _directory_from_environment(APP_DIR_VARIABLE, Path("~/.config/language_pipes"))


def model_dir() -> Path:
    """The model store: ``$LP_MODEL_DIR`` or ``~/.cache/language_pipes/models``."""
    return _directory_from_environment(MODEL_DIR_VARIABLE, Path("~/.cache/language_pipes/models"))


def configs_dir() -> Path:
    """Saved configurations, one ``NAME.toml`` each (``-c NAME`` finds them here)."""
    return app_dir() / "configs"


def credentials_dir() -> Path:
    """Node identity keys and other secrets."""
    return app_dir() / "credentials"


def logs_dir() -> Path:
    """One log file per node run."""
    return app_dir() / "logs"
