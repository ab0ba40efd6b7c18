"""Logging for one node run: stdout and a per-run log file.

Stdout lines read ``YYYY-MM-DD HH:MM:SS,mmm: message``; the file adds the level
and the logger name. Chatty third-party loggers are held at warning.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from pathlib import Path

from language_pipes.config import LogLevel
from language_pipes.paths import logs_dir

STDOUT_FORMAT = "%(asctime)s: %(message)s"
FILE_FORMAT = "%(asctime)s: %(levelname)s %(name)s: %(message)s"
NOISY_LOGGERS = (
    "uvicorn.access",
    "httpx",
    "httpcore",
    "transformers",
    "huggingface_hub",
    "urllib3",
    "httpx2",
    "httpcore2",
)

_LEVELS: dict[LogLevel, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def log_file_path(node_id: str, started: float | None = None) -> Path:
    """A fresh ``<node_id>-<timestamp>.log`` under :func:`logs_dir` (not created)."""
    safe_id = re.sub(r"[^A-Za-z0-9._-]", "_", node_id) or "node"
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    candidate = logs_dir() / f"{safe_id}-{stamp}.log"
    attempt = 1
    while candidate.exists():
        candidate = logs_dir() / f"{safe_id}-{stamp}-{attempt}.log"
        attempt += 1
    return candidate


def setup_logging(node_id: str, level: LogLevel = "info") -> Path:
    """Send the root logger to stdout and a new per-run file; return the file's path.

    Calling it again replaces the handlers it installed before, so a process
    never writes each line twice.
    """
    path = log_file_path(node_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    stdout_handler = logging.StreamHandler(sys.stdout)
    stdout_handler.setFormatter(logging.Formatter(STDOUT_FORMAT))
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(FILE_FORMAT))

    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_language_pipes", False)]:
        root.removeHandler(handler)
        handler.close()
    for handler in (stdout_handler, file_handler):
        handler._language_pipes = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(_LEVELS[level])

    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, _LEVELS[level]))
    logging.captureWarnings(True)
    return path
