"""Fixtures shared by every suite. Importing from ``support`` works because pytest puts tests/ on sys.path.

* ``model_store_dir``: the model store the README's setup fills (``$LP_MODEL_DIR`` or
  ``~/.cache/language_pipes/models``; ``$LP_TEST_MODEL_DIR`` picks another), with the
  embedded default model prepared in it once per session.
* ``default_model_dir`` / ``default_tokenizer``: that model's folder and its tokenizer.
  A test never skips for want of them: preparing the model fails loudly instead.
* ``node_launcher``: starts real node processes (see ``support.node_process``) and kills
  them at teardown.
* ``start_node``: starts PeerNetwork instances in the test's process (``support.peers``).

The OpenMP settings of ``language_pipes.process_settings`` are applied at import,
before torch loads, as the CLI and the terminal interface do.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from language_pipes import paths
from language_pipes.models.default_model import prepare_default_model
from language_pipes.process_settings import prepare_native_threads
from support.node_process import NodeLauncher
from support.peers import start_node  # noqa: F401 - a fixture: PeerNetworks in this process

# Before anything loads torch: nodes started in this process (the TUI tests) get the OpenMP
# settings a node started from the terminal interface gets.
prepare_native_threads()


@pytest.fixture(scope="session")
def model_store_dir() -> Path:
    configured = os.environ.get("LP_TEST_MODEL_DIR")
    path = Path(configured) if configured else paths.model_dir()
    path.mkdir(parents=True, exist_ok=True)
    prepare_default_model(path)
    return path


@pytest.fixture(scope="session")
def default_model_dir(model_store_dir: Path) -> Path:
    """The default model's folder in the store (tokenizer, chat template, weights)."""
    return prepare_default_model(model_store_dir)


@pytest.fixture(scope="session")
def default_tokenizer(default_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(default_model_dir))


@pytest.fixture
def node_launcher(tmp_path: Path, model_store_dir: Path) -> Iterator[NodeLauncher]:
    launcher = NodeLauncher(tmp_path / "nodes", model_store_dir)
    try:
        yield launcher
    finally:
        launcher.stop_all()
