"""One real node process shared by the conformance tests, driven through the official ``openai`` SDK.

The node holds the whole default model by itself, requires the API keys
``foo``/``bar`` and allows ``MAX_API_JOBS`` requests in flight per key.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from support.node_process import DEFAULT_MODEL, NodeLauncher, NodeProcess, single_node_settings

MODEL = DEFAULT_MODEL
API_KEYS = ["foo", "bar"]
MAX_API_JOBS = 2


@pytest.fixture(scope="session")
def api_node(tmp_path_factory: pytest.TempPathFactory, model_store_dir: Path) -> Iterator[NodeProcess]:
    launcher = NodeLauncher(tmp_path_factory.mktemp("conformance-nodes"), model_store_dir)
    try:
        node = launcher.start(
            "conformance", api_keys=API_KEYS, max_api_jobs=MAX_API_JOBS, **single_node_settings(MODEL)
        )
        node.wait_until_serving(MODEL)
        yield node
    finally:
        launcher.stop_all()


@pytest.fixture
def client(api_node: NodeProcess) -> OpenAI:
    """The seed's client: ``OpenAI(base_url=..., api_key="foo")``, without retries so limits are visible."""
    return OpenAI(base_url=api_node.base_url, api_key="foo", max_retries=0, timeout=120)
