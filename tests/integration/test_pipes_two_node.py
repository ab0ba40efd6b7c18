"""Two real node processes: an end-model node (API, layer 0) and a layer node (layers 1-29).

The layer node starts with an empty model store and no hub (``HF_ENDPOINT`` names a
closed local port, ``HF_HUB_OFFLINE`` unset): it fetches the tensors of its layers,
and only those, from the end node over the keyed peer network. Greedy output through
the ``openai`` SDK must be token-identical to transformers in one process. The last
test SIGKILLs the layer node mid-stream: the client must get an error within 5 s,
the next request a 503 at once, and the model must be servable again once the layer
node is restarted (end node untouched; the restarted node loads what it fetched).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from support.cluster import (
    DEFAULT_MODEL,
    ReferenceModel,
    full_output,
    hosted_layers,
    model_folder,
    new_network_key,
    start_end_node,
    start_layer_node,
)
from support.node_process import NodeLauncher, NodeProcess
from support.reference_checks import assert_completion_matches_reference, assert_stream_matches_reference

pytestmark = pytest.mark.slow

MAX_TOKENS = 32
PROMPTS = [
    [{"role": "user", "content": "Name three colours of the rainbow."}],
    [
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "Why is the sky blue?"},
    ],
]
ERROR_DEADLINE_SECONDS = 5.0
FETCHED_LINE = re.compile(r"fetched ([\d.]+) MB of \S+ \(([\d.]+) MB already here\) from (.+)")


def _no_hub() -> dict[str, str | None]:
    """The hub unreachable at the HTTP level: a closed local port, offline mode not set."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    return {"HF_ENDPOINT": f"http://127.0.0.1:{closed_port}", "HF_HUB_OFFLINE": None}


@dataclass
class TwoNodeCluster:
    launcher: NodeLauncher
    end: NodeProcess
    layer: NodeProcess
    network_key: str
    reference: ReferenceModel
    layer_launcher: NodeLauncher  # its own, empty model store: the layers come from peers

    def client(self, timeout: float = 120) -> OpenAI:
        return OpenAI(base_url=self.end.base_url, api_key="unused", max_retries=0, timeout=timeout)

    def start_layer_node(self) -> NodeProcess:
        """(Re)start the layer node under the same id, so with the same identity key."""
        self.layer = start_layer_node(
            self.layer_launcher,
            "layers",
            self.end,
            memory_gigabytes=2,
            network_key=self.network_key,
            model_source="peers",
            environment=_no_hub(),
        )
        return self.layer


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, model_store_dir: Path) -> Iterator[TwoNodeCluster]:
    folder = tmp_path_factory.mktemp("two-node")
    launcher = NodeLauncher(folder, model_store_dir)
    layer_launcher = NodeLauncher(folder / "layer-node", folder / "empty-store")
    key = new_network_key()
    try:
        end = start_end_node(launcher, "end", network_key=key)
        reference = ReferenceModel(model_folder(model_store_dir))
        cluster = TwoNodeCluster(launcher, end, end, key, reference, layer_launcher)
        cluster.start_layer_node()
        end.wait_until_serving(DEFAULT_MODEL)
        yield cluster
    finally:
        layer_launcher.stop_all()
        launcher.stop_all()


def test_layer_node_hosts_every_layer_after_the_end_models(cluster: TwoNodeCluster) -> None:
    assert hosted_layers(cluster.layer) == range(1, 30)
    models = cluster.client().models.list()
    assert [model.id for model in models.data] == [DEFAULT_MODEL]


def test_the_layer_node_fetched_only_its_layers_from_the_end_node(cluster: TwoNodeCluster) -> None:
    fetched = FETCHED_LINE.search(full_output(cluster.layer))
    assert fetched is not None and fetched.group(3).startswith("end "), full_output(cluster.layer)[-3000:]
    installed = model_folder(cluster.layer_launcher.model_dir)
    held = set(json.loads((installed / ".lp-weights.json").read_text())["tensors"])
    assert "model.embed_tokens.weight" not in held and "model.layers.0.mlp.up_proj.weight" not in held
    assert "model.layers.29.mlp.up_proj.weight" in held
    checkpoint = (installed / "model.safetensors").stat().st_size
    assert float(fetched.group(1)) * 1e6 < 0.85 * checkpoint  # neither the embedding nor layer 0


@pytest.mark.parametrize("messages", PROMPTS, ids=["rainbow", "sky"])
def test_greedy_output_matches_transformers_in_one_process(
    cluster: TwoNodeCluster, messages: list[dict[str, str]]
) -> None:
    assert_completion_matches_reference(cluster.client(), cluster.reference, messages, MAX_TOKENS)


def test_streamed_greedy_output_matches_transformers(cluster: TwoNodeCluster) -> None:
    assert_stream_matches_reference(
        cluster.client(), cluster.reference, PROMPTS[0], MAX_TOKENS, include_usage=True
    )


def test_killing_the_layer_node_mid_stream_fails_fast_and_the_restarted_node_serves_again(
    cluster: TwoNodeCluster,
) -> None:
    stream = cluster.client(timeout=30).chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
        max_tokens=2000,
        temperature=0,
        stream=True,
    )
    chunks = iter(stream)
    received = 0
    while received < 3:  # the stream is flowing through the layer node
        chunk = next(chunks)
        received += bool(chunk.choices and chunk.choices[0].delta.content)

    os.killpg(cluster.layer.process.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    outcome = _drain_with_watchdog(chunks, timeout=ERROR_DEADLINE_SECONDS + 5)
    elapsed = outcome.ended_at - killed_at
    assert outcome.error is not None, f"the stream ended without an error after {elapsed:.1f} s"
    assert isinstance(outcome.error, openai.APIError), repr(outcome.error)
    assert elapsed < ERROR_DEADLINE_SECONDS, f"the error came {elapsed:.1f} s after the kill"
    cluster.layer.process.wait(10)

    # The pipe is gone: the next request is refused at once, in the error envelope.
    started = time.monotonic()
    response = httpx.post(
        f"{cluster.end.base_url}/chat/completions",
        json={"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        timeout=10,
    )
    assert response.status_code == 503, response.text
    assert "error" in response.json()
    assert time.monotonic() - started < 2.0

    # The same layer node comes back; the end node was never restarted.
    assert cluster.end.is_running()
    cluster.start_layer_node()
    cluster.end.wait_until_serving(DEFAULT_MODEL, timeout=180)
    assert_completion_matches_reference(cluster.client(), cluster.reference, PROMPTS[1], MAX_TOKENS)


@dataclass
class DrainOutcome:
    error: BaseException | None
    ended_at: float


def _drain_with_watchdog(chunks: Iterator[object], timeout: float) -> DrainOutcome:
    """Read the rest of a stream in a thread; a hang past ``timeout`` fails the test instead of blocking."""
    outcome: list[DrainOutcome] = []

    def drain() -> None:
        try:
            for _ in chunks:
                pass
        except BaseException as error:  # noqa: BLE001 - the error is the outcome under test, reported below
            outcome.append(DrainOutcome(error, time.monotonic()))
            return
        outcome.append(DrainOutcome(None, time.monotonic()))

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    reader.join(timeout)
    if not outcome:
        raise AssertionError(f"the stream still hangs {timeout:.0f} s after the layer node was killed")
    return outcome[0]
