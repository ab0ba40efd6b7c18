"""Losing, restarting and draining layer nodes while clients stream, with real node processes.

One cluster for the module: an end node (API, layer 0) and two layer nodes
``a`` and ``b`` that each host every shared layer (1-29), so either alone is a
complete pipe. Each test starts with both layer nodes serving.

Which replica works is read from outside: a layer node's CPU time grows by
about a second for each short request it runs and stays nearly flat while
idle (heartbeats only), so the CPU time each node's process used during a
request shows which replica served it.

The undisturbed reference is the same cluster's greedy output for the prompt
streamed alone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.chaos_cluster import (
    ALL_LAYERS_GIGABYTES,
    ChaosCluster,
    LayerNode,
    StreamResult,
    client_for,
    stream_chat,
)

pytestmark = pytest.mark.slow

LONG_PROMPT = 6  # "Describe the sea to someone who has never seen it."
LONG_TOKENS = 64
SHORT_TOKENS = 24
HANG_SECONDS = 60.0
ERROR_DEADLINE_SECONDS = 5.0
# A replica that ran a request used at least this much CPU; an idle one stays far below.
BUSY_CPU_SECONDS = 0.25


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, model_store_dir: Path) -> Iterator[ChaosCluster]:
    chaos = ChaosCluster.create(tmp_path_factory.mktemp("node-loss"), model_store_dir)
    try:
        chaos.start_end()
        # Both host every shared layer whatever the other claimed, so they can start together.
        replicas = [chaos.add_layer_node(name, ALL_LAYERS_GIGABYTES, wait=False) for name in ("a", "b")]
        for replica in replicas:
            chaos.wait_serving(replica)
        chaos.wait_until_servable()
        yield chaos
    finally:
        chaos.stop_all()


@pytest.fixture(autouse=True)
def both_replicas_serving(cluster: ChaosCluster) -> None:
    """Each test starts with ``a`` and ``b`` serving: the previous test's victims are restarted first.

    Restoring before rather than after each test spares restarting the last test's victims
    only for the module's teardown to stop them.
    """
    _restore(cluster)


def _restore(cluster: ChaosCluster) -> None:
    for node in cluster.layers:
        if node.refresh() == "dead":
            cluster.restart(node)
    cluster.wait_until_servable()


@pytest.fixture(scope="module")
def reference(cluster: ChaosCluster) -> dict[tuple[int, int], str]:
    """Greedy text of each prompt the tests use, streamed alone with nothing disturbed."""
    assert cluster.end is not None
    client = client_for(cluster.end, HANG_SECONDS)
    texts: dict[tuple[int, int], str] = {}
    for prompt, tokens in [(LONG_PROMPT, LONG_TOKENS), *((index, SHORT_TOKENS) for index in range(4))]:
        result = stream_chat(client, prompt, tokens, HANG_SECONDS)
        assert result.outcome == "completed", result
        texts[(prompt, tokens)] = result.text
    assert len(texts[(LONG_PROMPT, LONG_TOKENS)]) > 100, "the long request must outlast a kill"
    return texts


def _node(cluster: ChaosCluster, name: str) -> LayerNode:
    return next(node for node in cluster.layers if node.name == name)


def _busiest(cluster: ChaosCluster, window: float = 0.6) -> LayerNode:
    """The serving layer node that used the most CPU over ``window`` seconds (the one a stream is on)."""
    nodes = cluster.serving()
    before = [node.cpu_seconds() for node in nodes]
    time.sleep(window)
    used = [node.cpu_seconds() - start for node, start in zip(nodes, before, strict=True)]
    return nodes[used.index(max(used))]


class BackgroundStream:
    """One streamed request in a thread, noting when its first text arrived."""

    def __init__(self, cluster: ChaosCluster, prompt: int, tokens: int) -> None:
        assert cluster.end is not None
        self.result: StreamResult | None = None
        self.finished_at: float | None = None
        self._thread = threading.Thread(target=self._run, args=(cluster, prompt, tokens), daemon=True)
        self._thread.start()

    def _run(self, cluster: ChaosCluster, prompt: int, tokens: int) -> None:
        assert cluster.end is not None
        self.result = stream_chat(client_for(cluster.end, HANG_SECONDS), prompt, tokens, HANG_SECONDS)
        self.finished_at = time.monotonic()

    def join(self, timeout: float = HANG_SECONDS + 10) -> StreamResult:
        self._thread.join(timeout)
        assert self.result is not None, "the stream neither ended nor timed out"
        return self.result


def _wait_for_load(cluster: ChaosCluster, seconds: float = 1.0) -> LayerNode:
    """Give a just-started stream time to reach its route, then return the replica running it."""
    time.sleep(seconds)
    return _busiest(cluster)


def test_killing_the_replica_in_use_mid_stream_is_invisible_to_the_client(
    cluster: ChaosCluster, reference: dict[tuple[int, int], str]
) -> None:
    stream = BackgroundStream(cluster, LONG_PROMPT, LONG_TOKENS)
    victim = _wait_for_load(cluster)
    assert stream.result is None, "the stream ended before the kill; make it longer"
    cluster.kill(victim)
    result = stream.join()
    assert result.outcome == "completed", result.error
    assert result.text == reference[(LONG_PROMPT, LONG_TOKENS)]
    assert cluster.end is not None
    assert "replaying sequence" in cluster.end.output()


def test_losing_the_only_replica_errors_fast_and_a_new_node_serves_again(
    cluster: ChaosCluster, reference: dict[tuple[int, int], str]
) -> None:
    assert cluster.end is not None
    end_pid = cluster.end.process.pid
    cluster.kill(_node(cluster, "b"))
    time.sleep(4)  # the end node notices b is gone: a is now the only replica
    only = _node(cluster, "a")
    stream = BackgroundStream(cluster, LONG_PROMPT, LONG_TOKENS)
    time.sleep(1.0)
    assert stream.result is None, "the stream ended before the kill; make it longer"
    cluster.kill(only)
    killed_at = time.monotonic()
    result = stream.join()
    assert result.outcome == "failed", result
    assert stream.finished_at is not None
    assert stream.finished_at - killed_at <= ERROR_DEADLINE_SECONDS

    cluster.restart(only)
    cluster.wait_until_servable(timeout=60)
    again = stream_chat(client_for(cluster.end, HANG_SECONDS), 0, SHORT_TOKENS, HANG_SECONDS)
    assert again.outcome == "completed", again.error
    assert again.text == reference[(0, SHORT_TOKENS)]
    assert cluster.end.process.pid == end_pid and cluster.end.is_running()


def test_a_restarted_node_rejoins_and_is_routed_new_sequences(
    cluster: ChaosCluster, reference: dict[tuple[int, int], str]
) -> None:
    assert cluster.end is not None
    restarted, other = _node(cluster, "a"), _node(cluster, "b")
    cluster.kill(restarted)
    cluster.restart(restarted)
    cluster.wait_until_servable(timeout=60)
    client = client_for(cluster.end, HANG_SECONDS)

    # Both replicas up: sequential requests reach the restarted node too.
    before = restarted.cpu_seconds()
    for index in range(4):
        result = stream_chat(client, index, SHORT_TOKENS, HANG_SECONDS)
        assert result.outcome == "completed", result.error
        assert result.text == reference[(index, SHORT_TOKENS)]
    assert restarted.cpu_seconds() - before >= BUSY_CPU_SECONDS

    # Only the restarted node left: everything runs there, and runs right (no stale caches).
    cluster.kill(other)
    time.sleep(4)
    for index in range(4):
        result = stream_chat(client, index, SHORT_TOKENS, HANG_SECONDS)
        assert result.outcome == "completed", result.error
        assert result.text == reference[(index, SHORT_TOKENS)]


def test_two_replicas_share_concurrent_requests(cluster: ChaosCluster) -> None:
    replicas = cluster.serving()
    assert len(replicas) == 2
    time.sleep(2)  # the load both report settles back to zero
    before = [node.cpu_seconds() for node in replicas]
    streams = [BackgroundStream(cluster, index % 4, SHORT_TOKENS) for index in range(6)]
    results = [stream.join() for stream in streams]
    used = [node.cpu_seconds() - start for node, start in zip(replicas, before, strict=True)]
    assert all(result.outcome == "completed" for result in results), [r.error for r in results]
    assert min(used) >= BUSY_CPU_SECONDS, f"CPU seconds per replica: {used}"


def test_graceful_leave_under_load_fails_no_request(cluster: ChaosCluster) -> None:
    """SIGTERM a layer node while streams run: it drains and exits, no client sees an error."""
    stop = threading.Event()
    results: list[StreamResult] = []

    def keep_streaming(stream: int) -> None:
        assert cluster.end is not None
        client = client_for(cluster.end, HANG_SECONDS)
        index = stream
        while not stop.is_set():
            results.append(stream_chat(client, index % 4, SHORT_TOKENS, HANG_SECONDS))
            index += 1

    workers = [threading.Thread(target=keep_streaming, args=(n,), daemon=True) for n in range(3)]
    for worker in workers:
        worker.start()
    leaving = _wait_for_load(cluster, 3)  # the replica the streams run on
    cluster.terminate(leaving)
    exit_code = cluster.wait_exit(leaving, timeout=60)
    time.sleep(3)
    stop.set()
    for worker in workers:
        worker.join(HANG_SECONDS + 10)
    failures = [r.error for r in results if r.outcome != "completed"]
    assert failures == [], f"{len(failures)} of {len(results)} requests failed, first: {failures[0]}"
    assert exit_code == 0, leaving.log_text()[-3000:]
    assert len(results) >= 3
