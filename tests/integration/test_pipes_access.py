"""Nodes the network must keep out never become part of a pipe.

The end node has a ``network_key`` and ``whitelist_node_ids = ["end", "trusted"]``.
Three layer nodes try to join it: one with another key, one with no key, one
with the right key but an id outside the whitelist. The end node must keep
serving nothing (``/v1/models`` empty, chat 503) and both sides must log why.
A fourth, legitimate layer node then makes the model servable, which shows
the three were refused for who they are, not because joining is broken.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from support.cluster import (
    DEFAULT_MODEL,
    full_output,
    new_network_key,
    start_end_node,
    start_layer_node,
    wait_for_output,
)
from support.node_process import NodeLauncher, NodeProcess

pytestmark = pytest.mark.slow

LAYER_NODE_MEMORY_GIGABYTES = 0.3  # a partial pipe is enough to be tempting and quicker to load
WRONG_KEY_LOG = r"authentication failed \(wrong network key\?\)"


@dataclass
class Intruders:
    launcher: NodeLauncher
    network_key: str
    end: NodeProcess
    wrong_key: NodeProcess
    no_key: NodeProcess
    outsider: NodeProcess


@pytest.fixture(scope="module")
def intruders(tmp_path_factory: pytest.TempPathFactory, model_store_dir: Path) -> Iterator[Intruders]:
    launcher = NodeLauncher(tmp_path_factory.mktemp("access"), model_store_dir)
    key = new_network_key()
    try:
        end = start_end_node(launcher, "end", network_key=key, whitelist_node_ids=["end", "trusted"])
        wrong_key = start_layer_node(
            launcher, "wrong-key", end, LAYER_NODE_MEMORY_GIGABYTES, network_key=new_network_key()
        )
        no_key = start_layer_node(launcher, "no-key", end, LAYER_NODE_MEMORY_GIGABYTES)
        outsider = start_layer_node(launcher, "outsider", end, LAYER_NODE_MEMORY_GIGABYTES, network_key=key)
        for node in (wrong_key, no_key, outsider):
            # Each gave up waiting for peers and loaded layers as if alone.
            wait_for_output(node, r"loading layers \d+-\d+")
        # On a busy machine the end node's API can come up after the intruders loaded their layers.
        end.wait_until_answering()
        yield Intruders(launcher, key, end, wrong_key, no_key, outsider)
    finally:
        launcher.stop_all()


def _chat(end: NodeProcess) -> httpx.Response:
    return httpx.post(
        f"{end.base_url}/chat/completions",
        json={"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        timeout=30,
    )


def test_refused_nodes_never_make_the_model_servable(intruders: Intruders) -> None:
    deadline = time.monotonic() + 5  # several gossip and retry rounds after they loaded their layers
    while time.monotonic() < deadline:
        response = httpx.get(f"{intruders.end.base_url}/models", timeout=10)
        assert response.status_code == 200
        assert response.json()["data"] == []
        time.sleep(0.5)
    response = _chat(intruders.end)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["message"]


def test_a_node_with_another_network_key_is_refused_and_both_sides_say_why(intruders: Intruders) -> None:
    wait_for_output(intruders.end, WRONG_KEY_LOG, timeout=30)
    wait_for_output(intruders.wrong_key, r"refused us: network key mismatch", timeout=30)
    assert "connected to node 'wrong-key'" not in full_output(intruders.end)
    assert "accepted node 'wrong-key'" not in full_output(intruders.end)


def test_a_node_without_a_network_key_is_refused_and_both_sides_say_why(intruders: Intruders) -> None:
    wait_for_output(intruders.end, r"the peer sent no network key", timeout=30)
    wait_for_output(intruders.no_key, r"network key mismatch|uses a network key and this node has none", 30)
    assert "accepted node 'no-key'" not in full_output(intruders.end)


def test_a_node_outside_the_whitelist_is_refused_and_both_sides_say_why(intruders: Intruders) -> None:
    wait_for_output(intruders.end, r"refused node 'outsider' .*not in whitelist_node_ids", timeout=30)
    wait_for_output(intruders.outsider, r"refused us: not whitelisted", timeout=30)
    assert "accepted node 'outsider'" not in full_output(intruders.end)
    assert "connected to node 'outsider'" not in full_output(intruders.end)


def test_a_whitelisted_node_with_the_key_completes_the_pipe(intruders: Intruders) -> None:
    trusted = start_layer_node(
        intruders.launcher, "trusted", intruders.end, memory_gigabytes=2, network_key=intruders.network_key
    )
    intruders.end.wait_until_serving(DEFAULT_MODEL, timeout=180)
    response = _chat(intruders.end)
    assert response.status_code == 200, response.text
    assert trusted.is_running()
    for refused in ("wrong-key", "no-key", "outsider"):
        assert f"accepted node '{refused}'" not in full_output(intruders.end)
