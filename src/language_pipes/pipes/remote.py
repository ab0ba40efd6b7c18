"""A hop on another node, as the origin's scheduler thread sees it.

:class:`RemoteSegment` looks like a local :class:`LayerSegment` (``open``,
``forward``, ``release``) but each call is a message to the node, through a
:class:`~language_pipes.network.transport.PeerLink`, which alone decides
whether a step goes over the scheduler thread's step lane or the peer
network. A lost peer surfaces as an exception
within the network's failure timeout either way, and a peer that stays
connected but does not answer within its step's deadline fails the step
too: the scheduler counts that hop as lost and moves the route's sequences.
The deadline is ``step_timeout_s`` plus ``step_timeout_per_token_s`` for each
token of the step (config keys): a decode step must answer within about 5 s,
while a 512-token prefill step, which takes some 15 s on a busy two-core CPU,
gets the time it legitimately needs. A layer node runs one step at a time,
so a step sent while this origin's other lane (micro-batch) has one in flight
to the same node waits for it there: its deadline adds what the steps ahead
of it may still take (:class:`StepsInFlight`). Every answered step's round
trip is recorded per peer (``lp_hop_step_seconds`` of ``/metrics``, the TUI's
Pipes page).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import torch

from language_pipes import metrics
from language_pipes.models.segment import SegmentBatch
from language_pipes.network.peer_network import PeerNetwork
from language_pipes.network.transport import PeerLink
from language_pipes.network.types import NodeId
from language_pipes.pipes.frames import (
    KIND_OPEN,
    KIND_RELEASE,
    KIND_STEP,
    StepHeader,
    encode_sequence_ids,
    encode_step,
    tensor_bytes,
    tensor_from_bytes,
)
from language_pipes.vocabulary import SequenceId

# Default deadline of one step on one hop: a base plus an allowance per token of the step
# (NodeConfig.step_timeout_s and step_timeout_per_token_s set them per node).
STEP_TIMEOUT_S = 5.0
STEP_TIMEOUT_PER_TOKEN_S = 0.1
OPEN_TIMEOUT_S = 5.0


class StepsInFlight:
    """This process's steps in flight to each node, with the time by which each must be answered.

    A node answers steps in the order they arrive, one at a time, so a step
    sent behind others may wait until the last of them is due, then take
    its own allowance.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._due: dict[tuple[int, NodeId], dict[int, float]] = {}
        self._tickets = itertools.count()

    def begin(self, key: tuple[int, NodeId], allowed_s: float) -> tuple[int, float]:
        """Register a step; returns its ticket and its deadline in seconds from now."""
        with self._lock:
            now = time.monotonic()
            due = self._due.setdefault(key, {})
            ahead = max((at - now for at in due.values()), default=0.0)
            timeout = max(0.0, ahead) + allowed_s
            ticket = next(self._tickets)
            due[ticket] = now + timeout
            return ticket, timeout

    def end(self, key: tuple[int, NodeId], ticket: int) -> None:
        with self._lock:
            due = self._due.get(key, {})
            due.pop(ticket, None)
            if not due:
                self._due.pop(key, None)


# Shared by every lane thread and route of this process (keyed by network and node).
STEPS_IN_FLIGHT = StepsInFlight()


class RemoteSegment:
    """Layers ``[start, end)`` of ``model_id`` run by ``node_id``."""

    def __init__(
        self,
        network: PeerNetwork,
        loop: asyncio.AbstractEventLoop,
        node_id: NodeId,
        model_id: str,
        start: int,
        end: int,
        dtype: torch.dtype,
        on_other_machine: bool = True,
        step_timeout_s: float = STEP_TIMEOUT_S,
        step_timeout_per_token_s: float = STEP_TIMEOUT_PER_TOKEN_S,
    ) -> None:
        self.link = PeerLink(network, loop, node_id)
        self.node_id = node_id
        self.model_id = model_id
        self.start, self.end = start, end
        self.dtype = dtype
        # A hop with its own compute: worth keeping busy with a second micro-batch.
        self.on_other_machine = on_other_machine
        self.step_timeout_s = step_timeout_s
        self.step_timeout_per_token_s = step_timeout_per_token_s

    def step_deadline_s(self, batch: SegmentBatch) -> float:
        """Seconds this hop may take for ``batch`` before it counts as lost."""
        return self.step_timeout_s + self.step_timeout_per_token_s * batch.total_tokens

    def open(self, sequence_id: SequenceId, max_tokens: int | None = None) -> None:
        header: dict[str, object] = {"model_id": self.model_id, "start": self.start, "end": self.end}
        if max_tokens is not None:
            header["max_tokens"] = max_tokens
        payload = encode_sequence_ids([sequence_id])
        self.link.request(KIND_OPEN, header, payload, OPEN_TIMEOUT_S)

    def forward(self, hidden: torch.Tensor, batch: SegmentBatch) -> torch.Tensor:
        header = encode_step(
            StepHeader(self.model_id, self.start, self.end, self.dtype, hidden.shape[-1], batch)
        )
        data = tensor_bytes(hidden.to(self.dtype))
        key = (id(self.link.network), self.node_id)
        ticket, timeout = STEPS_IN_FLIGHT.begin(key, self.step_deadline_s(batch))
        started = time.perf_counter()
        try:
            payload = self.link.exchange(KIND_STEP, header, data, timeout)
        finally:
            STEPS_IN_FLIGHT.end(key, ticket)
        metrics.record_hop_step(self.node_id, time.perf_counter() - started)
        return tensor_from_bytes(payload, self.dtype, hidden.shape[-1])

    def release(self, sequence_id: SequenceId) -> None:
        if self.link.is_live():
            # Fire and forget: the worker also sweeps idle caches.
            self.link.post(KIND_RELEASE, b"", encode_sequence_ids([sequence_id]))
