"""Prometheus metrics of one node process, served as ``GET /metrics`` on the API port.

This module sits low in the layering (it imports only ``prometheus_client``), so
the engine, the pipes and the API can all record into it:

* :func:`record_request` (the API's middleware): requests by endpoint and status;
* :func:`record_first_token` / :func:`record_output_pace`: time to first token and
  time per output token of each generation;
* :func:`record_hop_step` (the origin's remote hops): the round trip of one pipe
  step to one peer, including that peer's compute;
* :func:`record_speculation`: tokens drafted and accepted by speculative decoding
  (each hosted end model's scheduler reports every verification step).

Gauges that describe the node right now (queue depth, KV use) are read at scrape
time from a :class:`NodeStateSource` the node hands to the API (see
:func:`render`). The recorded metrics are process-wide: several nodes started in
one process (tests) share them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds: from sub-millisecond loopback hops to internet round trips and slow prefills.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_TOKEN_PACE_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)

REQUESTS = Counter(
    "lp_requests",
    "HTTP requests answered by the API, by endpoint and status",
    ["endpoint", "status"],
    registry=None,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "lp_time_to_first_token_seconds",
    "From the start of a generation (prompt tokenized) to its first output token",
    buckets=_LATENCY_BUCKETS,
    registry=None,
)
TIME_PER_OUTPUT_TOKEN = Histogram(
    "lp_time_per_output_token_seconds",
    "Decode time per output token after the first, one sample per generation",
    buckets=_TOKEN_PACE_BUCKETS,
    registry=None,
)
HOP_STEP = Histogram(
    "lp_hop_step_seconds",
    "Round trip of one pipe step to a peer's layers (network both ways plus the peer's compute)",
    ["peer"],
    buckets=_LATENCY_BUCKETS,
    registry=None,
)
SPECULATION_DRAFTED = Counter(
    "lp_speculation_drafted_tokens", "Tokens proposed by speculative decoding for verification", registry=None
)
SPECULATION_ACCEPTED = Counter(
    "lp_speculation_accepted_tokens", "Drafted tokens the pipe's verification accepted", registry=None
)
_RECORDED: tuple[Collector, ...] = (
    REQUESTS,
    TIME_TO_FIRST_TOKEN,
    TIME_PER_OUTPUT_TOKEN,
    HOP_STEP,
    SPECULATION_DRAFTED,
    SPECULATION_ACCEPTED,
)


def record_request(endpoint: str, status: int) -> None:
    REQUESTS.labels(endpoint=endpoint, status=str(status)).inc()


def record_first_token(seconds: float) -> None:
    TIME_TO_FIRST_TOKEN.observe(max(0.0, seconds))


def record_output_pace(decode_seconds: float, tokens_after_first: int) -> None:
    """One generation's decode pace: ``decode_seconds`` spent on ``tokens_after_first`` tokens."""
    if tokens_after_first > 0:
        TIME_PER_OUTPUT_TOKEN.observe(max(0.0, decode_seconds) / tokens_after_first)


def record_speculation(drafted: int, accepted: int) -> None:
    """Count one verification: ``drafted`` tokens proposed, ``accepted`` of them kept (0 <= accepted)."""
    if drafted < 0 or accepted < 0 or accepted > drafted:
        raise ValueError(f"need 0 <= accepted <= drafted, got drafted={drafted}, accepted={accepted}")
    SPECULATION_DRAFTED.inc(drafted)
    SPECULATION_ACCEPTED.inc(accepted)


# -- per-hop latency, also kept for the terminal interface -------------------------------------

# Weight of the newest step in a hop's moving average (about the last 10 steps).
_AVERAGE_WEIGHT = 0.2


@dataclass(frozen=True)
class HopLatency:
    """Recent step round trips to one peer."""

    last_s: float
    average_s: float
    steps: int
    updated_at: float  # time.monotonic() of the last step


_hops: dict[str, HopLatency] = {}
_hops_lock = threading.Lock()


def record_hop_step(peer: str, seconds: float) -> None:
    """One step's round trip to ``peer`` (called from scheduler threads)."""
    seconds = max(0.0, seconds)
    HOP_STEP.labels(peer=peer).observe(seconds)
    with _hops_lock:
        previous = _hops.get(peer)
        average = (
            seconds
            if previous is None
            else previous.average_s + _AVERAGE_WEIGHT * (seconds - previous.average_s)
        )
        steps = 1 if previous is None else previous.steps + 1
        _hops[peer] = HopLatency(seconds, average, steps, time.monotonic())


def hop_latencies() -> dict[str, HopLatency]:
    """A snapshot of the recent step round trip to every peer this process stepped through."""
    with _hops_lock:
        return dict(_hops)


# -- gauges read at scrape time ----------------------------------------------------------------


@dataclass(frozen=True)
class ModelState:
    """What one model's scheduler and KV caches on this node hold right now."""

    model_id: str
    active_sequences: int  # stepping on this origin
    queued_sequences: int  # submitted, not yet stepping
    kv_cache_bytes: int  # KV tensors of this node's layer segments
    kv_reserved_bytes: int  # memory reserved for the sequences opened on them
    kv_budget_bytes: int | None  # None: no budget (a segment without limit)


NodeStateSource = Callable[[], Iterable[ModelState]]


class _NodeStateCollector(Collector):
    def __init__(self, source: NodeStateSource) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        families = {
            "active": GaugeMetricFamily(
                "lp_active_sequences", "Sequences stepping on this origin", labels=["model"]
            ),
            "queued": GaugeMetricFamily(
                "lp_queue_depth", "Sequences submitted to this origin and not yet stepping", labels=["model"]
            ),
            "kv": GaugeMetricFamily(
                "lp_kv_cache_bytes", "Bytes of KV cache held by this node's layer segments", labels=["model"]
            ),
            "reserved": GaugeMetricFamily(
                "lp_kv_reserved_bytes", "KV memory reserved for open sequences on this node", labels=["model"]
            ),
            "budget": GaugeMetricFamily(
                "lp_kv_budget_bytes", "KV memory this node's layer segments may reserve", labels=["model"]
            ),
        }
        for state in self._source():
            labels = [state.model_id]
            families["active"].add_metric(labels, state.active_sequences)
            families["queued"].add_metric(labels, state.queued_sequences)
            families["kv"].add_metric(labels, state.kv_cache_bytes)
            families["reserved"].add_metric(labels, state.kv_reserved_bytes)
            if state.kv_budget_bytes is not None:
                families["budget"].add_metric(labels, state.kv_budget_bytes)
        return list(families.values())


def build_registry(node_state: NodeStateSource | None = None) -> CollectorRegistry:
    """A registry with every recorded metric and, given ``node_state``, the node's gauges."""
    registry = CollectorRegistry(auto_describe=True)
    for collector in _RECORDED:
        registry.register(collector)
    if node_state is not None:
        registry.register(_NodeStateCollector(node_state))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text exposition format."""
    return generate_latest(registry)
