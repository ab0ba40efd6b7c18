"""The configs in examples/ are valid, consistent with each other, and really serve the API.

Each multi-node example is started as written, except that its ports are moved
to free ones (8000/5000 may be taken on a shared machine) and the bootstrap
entries follow the end node's moved peer port.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from language_pipes.cli import new_network_key
from language_pipes.config import load_config
from support.cluster import DEFAULT_MODEL, hosted_layers
from support.node_process import NodeLauncher, NodeProcess

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ALL_EXAMPLES = sorted(EXAMPLES.rglob("*.toml"))
# Each multi-node example: its files in start order, and the layers each layer node should host.
TOPOLOGIES: dict[str, list[tuple[str, range | None]]] = {
    "two-node": [("end-node.toml", None), ("layer-node.toml", range(1, 30))],
    "three-node": [
        ("end-node.toml", None),
        ("layer-node-a.toml", range(1, 16)),
        ("layer-node-b.toml", range(16, 30)),
    ],
}


def _read(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text())


def test_every_example_is_a_valid_config_with_one_torch_thread() -> None:
    assert {path.relative_to(EXAMPLES).as_posix() for path in ALL_EXAMPLES} >= {
        "single-node.toml",
        *(f"{name}/{file}" for name, files in TOPOLOGIES.items() for file, _ in files),
    }
    for path in ALL_EXAMPLES:
        config = load_config(str(path))
        assert config.torch_threads == 1, path
        assert "torch_threads" in _read(path), f"{path} should set torch_threads explicitly"


@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_multi_node_examples_agree_on_key_ports_and_bootstrap(name: str) -> None:
    paths = [EXAMPLES / name / file for file, _ in TOPOLOGIES[name]]
    # No example ships a key (a published key protects nothing); they share $LP_NETWORK_KEY.
    assert not [path for path in paths if "network_key" in _read(path)]
    configs = [load_config(str(path)) for path in paths]
    end, *layer_nodes = configs
    assert len({config.peer_port for config in configs}) == len(configs)
    assert len({config.node_id for config in configs}) == len(configs)
    assert end.job_port is not None and end.end_models and not end.layer_models
    for layer in layer_nodes:
        assert layer.job_port is None and layer.layer_models and not layer.end_models
        assert [(b.address, b.port) for b in layer.bootstrap_nodes] == [("127.0.0.1", end.peer_port)]


def _start_as_written(launcher: NodeLauncher, path: Path, end: NodeProcess | None, key: str) -> NodeProcess:
    """Start the example's node with its own settings, moved to free ports."""
    document = _read(path)
    settings = {
        key: value
        for key, value in document.items()
        if key not in ("node_id", "job_port", "peer_port", "torch_threads", "max_api_jobs", "api_keys")
    }
    settings["network_key"] = key  # what $LP_NETWORK_KEY gives every node of the example
    if end is not None:
        settings["bootstrap_nodes"] = [{"address": "127.0.0.1", "port": end.peer_port}]
    return launcher.start(
        document["node_id"],
        with_api="job_port" in document,
        max_api_jobs=document.get("max_api_jobs", 5),
        torch_threads=document["torch_threads"],
        **settings,
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_multi_node_example_serves_the_api(name: str, node_launcher: NodeLauncher) -> None:
    end: NodeProcess | None = None
    layer_nodes: list[tuple[NodeProcess, range | None]] = []
    key = new_network_key()
    for file, layers in TOPOLOGIES[name]:
        node = _start_as_written(node_launcher, EXAMPLES / name / file, end, key)
        if end is None:
            end = node
        else:
            layer_nodes.append((node, layers))
            hosted_layers(node)  # start the next layer node once this one has chosen its layers
    assert end is not None
    end.wait_until_serving(DEFAULT_MODEL)
    for node, layers in layer_nodes:
        assert hosted_layers(node) == layers
    client = OpenAI(base_url=end.base_url, api_key="unused", max_retries=0, timeout=120)
    completion = client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": "What is distributed computing?"}],
        max_tokens=12,
    )
    assert completion.choices[0].message.content
