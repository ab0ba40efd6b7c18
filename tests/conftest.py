"""Fixtures shared by every suite. Importing from ``support`` works because pytest puts tests/ on sys.path.

* ``model_store_dir``: one model store for the whole session (the node prepares the
  embedded default model in it once); ``$LP_TEST_MODEL_DIR`` reuses a store between runs.
* ``node_launcher``: starts real node processes (see ``support.node_process``) and kills
  them at teardown.
* ``start_node``: starts PeerNetwork instances in the test's process (``support.peers``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.node_process import NodeLauncher
from support.peers import start_node  # noqa: F401 - a fixture: PeerNetworks in this process


@pytest.fixture(scope="session")
def model_store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("LP_TEST_MODEL_DIR")
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("models")


@pytest.fixture
def node_launcher(tmp_path: Path, model_store_dir: Path) -> Iterator[NodeLauncher]:
    launcher = NodeLauncher(tmp_path / "nodes", model_store_dir)
    try:
        yield launcher
    finally:
        launcher.stop_all()
