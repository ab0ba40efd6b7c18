"""Logging for one node run: stdout and a per-run log file.

Stdout lines read ``YYYY-MM-DD HH:MM:SS,mmm: message``; the file adds the level
and the logger name. Chatty third-party loggers are held at warning.

Disk use is bounded whatever peers and clients make a node log: each run's file
rotates at :data:`LOG_FILE_BYTES` keeping :data:`LOG_FILE_BACKUPS` older parts,
and only the newest :data:`KEPT_RUNS` runs' files of a node stay in the folder.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
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

LOG_FILE_BYTES = 16 * 1024 * 1024
LOG_FILE_BACKUPS = 3
KEPT_RUNS = 20

_LEVELS: dict[LogLevel, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _safe_id(node_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", node_id) or "node"


def log_file_path(node_id: str, started: float | None = None) -> Path:
    """A fresh ``<node_id>-<timestamp>.log`` under :func:`logs_dir` (not created)."""
    safe_id = _safe_id(node_id)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    candidate = logs_dir() / f"{safe_id}-{stamp}.log"
    attempt = 1
    while candidate.exists():
        candidate = logs_dir() / f"{safe_id}-{stamp}-{attempt}.log"
        attempt += 1
    return candidate


def prune_old_runs(node_id: str, keep: int = KEPT_RUNS) -> list[Path]:
    """Delete all but the newest ``keep`` runs' log files (and their rotated parts) of ``node_id``."""
    folder = logs_dir()
    if not folder.is_dir():
        return []
    pattern = re.compile(re.escape(_safe_id(node_id)) + r"-\d{8}-\d{6}(-\d+)?\.log")
    runs = sorted(
        (path for path in folder.iterdir() if pattern.fullmatch(path.name)),
        key=lambda path: path.stat().st_mtime,
    )
    removed = []
    for run in runs[: max(0, len(runs) - keep)]:
        for part in (run, *folder.glob(run.name + ".*")):
            with contextlib.suppress(FileNotFoundError):  # another process pruned it just now
                part.unlink()
                removed.append(part)
    return removed


def open_run_log(node_id: str) -> tuple[logging.Handler, Path]:
    """A rotating file handler on a fresh per-run file, after pruning the node's oldest runs."""
    path = log_file_path(node_id)
    with contextlib.suppress(FileExistsError):  # another run created the folder just now
        path.parent.mkdir(parents=True, exist_ok=True)
    prune_old_runs(node_id, keep=KEPT_RUNS - 1)
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILE_BACKUPS, encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    return handler, path


def setup_logging(node_id: str, level: LogLevel = "info") -> Path:
    """Send the root logger to stdout and a new per-run file; return the file's path.

    Calling it again replaces the handlers it installed before, so a process
    never writes each line twice.
    """
    stdout_handler = logging.StreamHandler(sys.stdout)
    stdout_handler.setFormatter(logging.Formatter(STDOUT_FORMAT))
    file_handler, path = open_run_log(node_id)

    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_language_pipes", False)]:
        root.removeHandler(handler)
        handler.close()
    for handler in (stdout_handler, file_handler):
        handler._language_pipes = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    apply_level(level)
    logging.captureWarnings(True)
    return path


def apply_level(level: LogLevel) -> None:
    """Set the root logger to ``level``, holding chatty third-party loggers at warning or above."""
    logging.getLogger().setLevel(_LEVELS[level])
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, _LEVELS[level]))
