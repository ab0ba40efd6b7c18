"""Three real node processes: an end-model node and two layer nodes whose memory splits layers 1-29.

One decoder layer of the default model is ~7.1 MB at bf16, and placement budgets
16384 tokens * 768 B of KV cache per layer on top: ~19.7 MB a layer, so 0.3 GB
holds 15 layers. The first layer node takes layers 1-15, the second (which only
bootstraps to the end node and learns of the first by gossip) takes the rest,
16-29. Neither alone is a pipe; together they serve output token-identical to
transformers in one process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from support.cluster import (
    DEFAULT_MODEL,
    ReferenceModel,
    hosted_layers,
    model_folder,
    new_network_key,
    start_end_node,
    start_layer_node,
)
from support.node_process import NodeLauncher, NodeProcess
from support.reference_checks import assert_completion_matches_reference, assert_stream_matches_reference

pytestmark = pytest.mark.slow

LAYER_NODE_MEMORY_GIGABYTES = 0.3  # 15 layers of the default model
MAX_TOKENS = 32
PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about autumn leaves."}],
]


@dataclass
class ThreeNodeCluster:
    end: NodeProcess
    first_layers: NodeProcess
    second_layers: NodeProcess
    listed_with_one_layer_node: list[str]
    reference: ReferenceModel

    def client(self) -> OpenAI:
        return OpenAI(base_url=self.end.base_url, api_key="unused", max_retries=0, timeout=120)


def _listed_models(end: NodeProcess) -> list[str]:
    response = httpx.get(f"{end.base_url}/models", timeout=10)
    response.raise_for_status()
    return [card["id"] for card in response.json()["data"]]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, model_store_dir: Path) -> Iterator[ThreeNodeCluster]:
    launcher = NodeLauncher(tmp_path_factory.mktemp("three-node"), model_store_dir)
    key = new_network_key()
    try:
        end = start_end_node(launcher, "end", network_key=key)
        first = start_layer_node(launcher, "layers-a", end, LAYER_NODE_MEMORY_GIGABYTES, network_key=key)
        hosted_layers(first)
        _wait_for_api(end)
        # Give the first layer node time to load and gossip its layers: still no complete pipe.
        listed: list[str] = []
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            listed += _listed_models(end)
            time.sleep(0.5)
        second = start_layer_node(launcher, "layers-b", end, LAYER_NODE_MEMORY_GIGABYTES, network_key=key)
        end.wait_until_serving(DEFAULT_MODEL)
        yield ThreeNodeCluster(end, first, second, listed, ReferenceModel(model_folder(model_store_dir)))
    finally:
        launcher.stop_all()


def _wait_for_api(end: NodeProcess, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert end.is_running(), end.output()
        try:
            httpx.get(f"{end.base_url}/models", timeout=2)
            return
        except httpx.HTTPError:
            # Not listening yet: the end node is still loading.
            time.sleep(0.3)
    raise AssertionError(f"the end node's API did not come up:\n{end.output()}")


def test_layer_nodes_split_the_shared_layers_by_memory(cluster: ThreeNodeCluster) -> None:
    assert hosted_layers(cluster.first_layers) == range(1, 16)
    assert hosted_layers(cluster.second_layers) == range(16, 30)


def test_the_model_is_listed_only_once_both_layer_nodes_are_up(cluster: ThreeNodeCluster) -> None:
    assert cluster.listed_with_one_layer_node == []
    assert _listed_models(cluster.end) == [DEFAULT_MODEL]


@pytest.mark.parametrize("messages", PROMPTS, ids=["capital", "haiku"])
def test_greedy_output_matches_transformers_in_one_process(
    cluster: ThreeNodeCluster, messages: list[dict[str, str]]
) -> None:
    assert_completion_matches_reference(cluster.client(), cluster.reference, messages, MAX_TOKENS)


def test_streamed_greedy_output_matches_transformers(cluster: ThreeNodeCluster) -> None:
    assert_stream_matches_reference(cluster.client(), cluster.reference, PROMPTS[1], MAX_TOKENS)
