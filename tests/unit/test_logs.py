"""Node log files stay bounded on disk: a run's file rotates and old runs are pruned."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from language_pipes import logs


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LP_APP_DIR", str(tmp_path))
    return tmp_path


def _old_run(folder: Path, name: str, age_s: int) -> Path:
    path = folder / name
    path.write_text("old\n")
    stamp = path.stat().st_mtime - age_s
    os.utime(path, (stamp, stamp))
    return path


def test_only_the_newest_runs_of_a_node_are_kept(app_dir: Path) -> None:
    folder = app_dir / "logs"
    folder.mkdir()
    runs = [_old_run(folder, f"node-a-20260101-0000{i:02d}.log", age_s=1000 - i) for i in range(30)]
    rotated = _old_run(folder, runs[0].name + ".1", age_s=5000)
    other_node = _old_run(folder, "node-b-20260101-000000.log", age_s=9000)
    not_a_run = _old_run(folder, "notes.txt", age_s=9000)

    handler, path = logs.open_run_log("node-a")
    handler.close()

    remaining = sorted(p.name for p in folder.glob("node-a-*.log*"))
    assert len(remaining) == logs.KEPT_RUNS and path.name in remaining
    assert [p.name for p in runs[-(logs.KEPT_RUNS - 1) :]] == sorted(set(remaining) - {path.name})
    assert not rotated.exists() and other_node.exists() and not_a_run.exists()


def test_a_run_file_rotates_instead_of_growing_without_bound(
    app_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "LOG_FILE_BYTES", 4096)
    handler, path = logs.open_run_log("node-a")
    record = logging.LogRecord("language_pipes", logging.WARNING, __file__, 1, "x" * 200, None, None)
    for _ in range(200):
        handler.emit(record)
    handler.close()
    parts = sorted(path.parent.glob(path.name + "*"))
    assert len(parts) == 1 + logs.LOG_FILE_BACKUPS
    assert all(part.stat().st_size <= 4096 + 400 for part in parts)
