"""Two nodes on two hosts (network namespaces) with a 10 ms round trip between them.

The layer node's peer and lane traffic passes through a delay proxy (see
language_pipes.testbed), so every pipe step pays a real round trip. Greedy
output through the ``openai`` SDK must still equal transformers in one process,
the origin must use its step lane across the link, and ``/metrics`` of the
real node must show the hop's latency. Needs root (``ip netns``); CI runs as root.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from language_pipes.testbed.netns import PEER_PORT, Testbed, node_settings, unavailable_reason
from support.cluster import DEFAULT_MODEL, ReferenceModel, model_folder, new_network_key
from support.node_process import NodeLauncher, NodeProcess

UNAVAILABLE = unavailable_reason()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.netns,
    pytest.mark.skipif(UNAVAILABLE is not None, reason=f"no network namespaces: {UNAVAILABLE}"),
]

ROUND_TRIP_S = 0.010
MAX_TOKENS = 16
PROMPT = [{"role": "user", "content": "Name three colours of the rainbow."}]


@dataclass
class LinkedCluster:
    testbed: Testbed
    end: NodeProcess
    layers: NodeProcess
    reference: ReferenceModel

    def client(self) -> OpenAI:
        return OpenAI(base_url=self.end.base_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, model_store_dir: Path) -> Iterator[LinkedCluster]:
    launcher = NodeLauncher(tmp_path_factory.mktemp("netns"), model_store_dir)
    key = new_network_key()
    with Testbed(2) as testbed:
        origin_host, layer_host = testbed.hosts
        try:
            for host in testbed.hosts:
                testbed.start_delay_proxy(host, ROUND_TRIP_S)
            end = launcher.start(
                "end",
                command_prefix=tuple(origin_host.command([])),
                end_models=[DEFAULT_MODEL],
                network_key=key,
                **node_settings(origin_host),
            )
            layers = launcher.start(
                "layers",
                with_api=False,
                command_prefix=tuple(layer_host.command([])),
                layer_models=[{"model_id": DEFAULT_MODEL, "memory": 2}],
                bootstrap_nodes=[{"address": origin_host.address, "port": PEER_PORT}],
                network_key=key,
                **node_settings(layer_host, with_api=False),
            )
            end.wait_until_serving(DEFAULT_MODEL)
            yield LinkedCluster(testbed, end, layers, ReferenceModel(model_folder(model_store_dir)))
        finally:
            launcher.stop_all()


def test_greedy_output_across_the_link_matches_transformers(cluster: LinkedCluster) -> None:
    expected = cluster.reference.complete(PROMPT, MAX_TOKENS)
    completion = cluster.client().chat.completions.create(
        model=DEFAULT_MODEL,
        messages=PROMPT,  # type: ignore[arg-type]
        max_tokens=MAX_TOKENS,
        temperature=0,
    )
    assert completion.choices[0].message.content == expected.text
    assert completion.usage is not None and completion.usage.completion_tokens == len(expected.token_ids)


def test_metrics_of_the_origin_show_the_hop_through_the_link(cluster: LinkedCluster) -> None:
    cluster.client().chat.completions.create(
        model=DEFAULT_MODEL,
        messages=PROMPT,
        max_tokens=4,
        temperature=0,  # type: ignore[arg-type]
    )
    response = httpx.get(cluster.end.base_url.removesuffix("/v1") + "/metrics", timeout=10)
    assert response.status_code == 200
    found = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    peer = (("peer", "layers"),)
    steps = found[("lp_hop_step_seconds_count", peer)]
    assert steps >= 4
    # The proxy holds each direction 5 ms: no step of this hop can come back within 5 ms.
    assert found[("lp_hop_step_seconds_bucket", (("le", "0.005"), ("peer", "layers")))] == 0
    chat = (("endpoint", "/v1/chat/completions"), ("status", "200"))
    assert found[("lp_requests_total", chat)] >= 1
    assert found[("lp_time_to_first_token_seconds_count", ())] >= 1
    assert found[("lp_queue_depth", (("model", DEFAULT_MODEL),))] == 0


def test_the_testbed_removes_its_namespaces() -> None:
    with Testbed(1) as testbed:
        namespace = testbed.hosts[0].namespace
        assert namespace in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert namespace not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert testbed.bridge not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
