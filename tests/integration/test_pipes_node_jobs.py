"""``max_node_jobs``: the most sequences a layer node holds for one origin.

The layer node allows one sequence per origin; the end node allows several
API jobs. While one streamed request holds the layer node, a second request
gets a clear error naming ``max_node_jobs`` at once (not a hang); once the
first finishes, the layer node takes new requests again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
from openai import OpenAI

from support.cluster import DEFAULT_MODEL, new_network_key, start_end_node, start_layer_node
from support.node_process import NodeLauncher, NodeProcess

pytestmark = pytest.mark.slow

SECOND_REQUEST_DEADLINE_SECONDS = 5.0


@dataclass
class BusyCluster:
    end: NodeProcess
    layer: NodeProcess

    def client(self) -> OpenAI:
        return OpenAI(base_url=self.end.base_url, api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, model_store_dir: Path) -> Iterator[BusyCluster]:
    launcher = NodeLauncher(tmp_path_factory.mktemp("node-jobs"), model_store_dir)
    key = new_network_key()
    try:
        end = start_end_node(launcher, "end", network_key=key, max_api_jobs=4)
        layer = start_layer_node(
            launcher, "layers", end, memory_gigabytes=2, network_key=key, max_node_jobs=1
        )
        end.wait_until_serving(DEFAULT_MODEL)
        yield BusyCluster(end, layer)
    finally:
        launcher.stop_all()


def test_a_second_sequence_beyond_max_node_jobs_gets_a_clear_error(cluster: BusyCluster) -> None:
    client = cluster.client()
    first = client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": "Tell me a long story about a dragon."}],
        max_tokens=120,
        temperature=0,
        stream=True,
    )
    chunks = iter(first)
    next(chunk for chunk in chunks if chunk.choices and chunk.choices[0].delta.content)

    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(
            model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=8
        )
    assert time.monotonic() - started < SECOND_REQUEST_DEADLINE_SECONDS
    assert refused.value.status_code == 503
    assert "max_node_jobs" in refused.value.message

    finish_reasons = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finish_reasons[-1] in ("stop", "length")  # the first request was not disturbed

    # Its sequence was released on the layer node: the slot is free again.
    completion = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=8
    )
    assert completion.choices[0].message.content
