"""The layer worker: runs hosted segments for other nodes' sequences.

It answers three messages from origins: ``pipe.open`` (reserve room for a new
sequence, refused beyond ``max_node_jobs`` per origin), ``pipe.step`` (run a
packed batch through a layer range and reply with the hidden states) and
``pipe.release`` (free caches). Steps arrive over step lanes (run on the lane
thread, see network/lanes.py) or, from origins without a lane, over the peer
network (run on a compute thread so the event loop keeps serving). One lock
keeps the two from computing at once.

A sequence belongs to the origin that opened it: another origin can neither
open the same id, step it nor release it. ``pipe.open`` may name the
sequence's maximum length (``max_tokens``, default the model's context); the
segment reserves KV memory for it or refuses. Steps are bounded (pipes/
frames.py) and must match the segment's hidden size and their payload.
Every refusal of ``pipe.open`` is a :class:`RequestRefused` whose
:class:`RefusalKind` travels in the error reply, so the origin tells its
client why in its own words.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from language_pipes.models.segment import KVBudgetExceededError, LayerSegment, StepOutOfBoundsError
from language_pipes.network.peer_network import Header, PeerNetwork, Reply
from language_pipes.network.types import NodeId, RefusalKind, RequestRefused
from language_pipes.pipes.frames import (
    KIND_OPEN,
    KIND_RELEASE,
    KIND_STEP,
    MAX_MODEL_ID_BYTES,
    MalformedPipeFrame,
    decode_sequence_ids,
    decode_step,
    tensor_bytes,
    tensor_from_bytes,
)
from language_pipes.vocabulary import SequenceId

log = logging.getLogger(__name__)

IDLE_SEQUENCE_TIMEOUT_S = 600.0


class NodeBusyError(RequestRefused):
    """The origin already holds ``max_node_jobs`` sequences on this node, or the node is leaving."""


class SequenceOwnedError(RequestRefused):
    """The sequence id belongs to another origin."""

    def __init__(self, message: str) -> None:
        super().__init__(RefusalKind.NOT_OWNER, message)


class LayerWorker:
    """Serves this node's layer segments to the network."""

    def __init__(self, network: PeerNetwork, max_node_jobs: int) -> None:
        self.network = network
        self.max_node_jobs = max_node_jobs
        self.segments: dict[str, list[LayerSegment]] = {}
        self._owners: dict[NodeId, set[SequenceId]] = {}
        self._owner_of: dict[SequenceId, NodeId] = {}
        # True while the node is leaving: no new sequences; origins move the ones it holds.
        self.draining = False
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="layers")
        self._compute_lock = threading.Lock()
        self._sweeper: asyncio.Task[None] | None = None
        network.register_handler(KIND_OPEN, self._on_open)
        network.register_handler(KIND_STEP, self._on_step)
        network.register_lane_handler(KIND_STEP, self._run_step)
        network.register_handler(KIND_RELEASE, self._on_release)

    def host(self, model_id: str, segment: LayerSegment) -> None:
        self.segments.setdefault(model_id, []).append(segment)

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_idle())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._compute.shutdown(wait=False, cancel_futures=True)

    @property
    def sequence_count(self) -> int:
        return sum(len(owned) for owned in self._owners.values())

    def _segment_for(self, model_id: str, start: int, end: int) -> LayerSegment:
        for segment in self.segments.get(model_id, ()):
            if segment.start <= start and end <= segment.end:
                return segment
        raise LookupError(f"this node does not host layers {start}-{end} of {model_id}")

    async def _on_open(self, sender: NodeId, header: Header, payload: bytes) -> Reply:
        request = _open_request(header)
        try:
            segment = self._segment_for(request.model_id, request.start, request.end)
        except LookupError as error:
            raise RequestRefused(RefusalKind.NOT_HOSTED, str(error)) from error
        if self.draining:
            raise NodeBusyError(RefusalKind.LEAVING, f"node {self.network.node_id} is leaving the network")
        owned = self._owners.setdefault(sender, set())
        requested = list(dict.fromkeys(decode_sequence_ids(payload)))
        if any(self._owner_of.get(sid, sender) != sender for sid in requested):
            raise SequenceOwnedError("a sequence id in this request belongs to another origin")
        new = [sid for sid in requested if sid not in owned]
        if len(owned) + len(new) > self.max_node_jobs:
            raise NodeBusyError(
                RefusalKind.BUSY,
                f"node {self.network.node_id} already holds {len(owned)} sequences for {sender} "
                f"(max_node_jobs = {self.max_node_jobs})",
            )
        opened: list[SequenceId] = []
        try:
            for sequence_id in requested:
                segment.open(sequence_id, request.max_tokens)
                opened.append(sequence_id)
        except Exception as error:  # noqa: BLE001 - all or nothing: undo this request's new reservations, then refuse
            for sequence_id in opened:
                if sequence_id in new:
                    segment.release(sequence_id)
            if isinstance(error, KVBudgetExceededError):
                raise RequestRefused(RefusalKind.NO_MEMORY, str(error)) from error
            if isinstance(error, StepOutOfBoundsError):
                raise RequestRefused(RefusalKind.INVALID, str(error)) from error
            raise
        owned.update(new)
        self._owner_of.update((sid, sender) for sid in new)
        return {"accepted": len(new)}, b""

    async def _on_step(self, sender: NodeId, header: Header, payload: bytes) -> Reply:
        if not isinstance(header, bytes):
            raise ValueError("pipe.step needs a binary header")
        loop = asyncio.get_running_loop()
        return b"", await loop.run_in_executor(self._compute, self._run_step, sender, header, payload)

    def _run_step(self, sender: NodeId, header: bytes, payload: bytes) -> memoryview:
        """Run one packed step for ``sender`` and return the output hidden states (off the event loop)."""
        step = decode_step(header)
        segment = self._segment_for(step.model_id, step.start_layer, step.end_layer)
        owned = self._owners.get(sender, set())
        unknown = [sid for sid in step.batch.sequence_ids if sid not in owned]
        if unknown:
            raise LookupError(f"sequences not opened on this node for this origin: {', '.join(unknown)}")
        hidden_size = int(segment.model_id_config.hidden_size)
        if step.hidden_size != hidden_size:
            raise MalformedPipeFrame(f"hidden size {step.hidden_size} is not the model's {hidden_size}")
        expected = step.batch.total_tokens * hidden_size * torch.empty((), dtype=step.dtype).element_size()
        if len(payload) != expected:
            raise MalformedPipeFrame(f"the step's payload has {len(payload)} bytes, not {expected}")
        hidden = tensor_from_bytes(payload, step.dtype, step.hidden_size)
        with self._compute_lock:
            output = segment.forward(hidden, step.batch, step.start_layer, step.end_layer)
        return tensor_bytes(output.to(step.dtype))

    async def _on_release(self, sender: NodeId, header: Header, payload: bytes) -> Reply | None:
        owned = self._owners.get(sender, set())
        for sequence_id in decode_sequence_ids(payload):
            if sequence_id not in owned:
                continue  # not this origin's sequence (or already gone): nothing of its own to free
            owned.discard(sequence_id)
            self._owner_of.pop(sequence_id, None)
            for segments in self.segments.values():
                for segment in segments:
                    segment.release(sequence_id)
        return None

    def forget_unhosted(self) -> None:
        """Drop every origin's claim on sequences no hosted segment holds (after an unload).

        An unload waits until the leaving segments' caches are empty, but a sequence opened there
        and not yet stepped, or whose origin's release is still on its way, has no cache: without
        this its ownership would outlive the segment.
        """
        hosted = [segment for segments in self.segments.values() for segment in segments]
        for owned in self._owners.values():
            for sequence_id in [sid for sid in owned if not any(s.holds(sid) for s in hosted)]:
                owned.discard(sequence_id)
                self._owner_of.pop(sequence_id, None)

    def forget_origin(self, origin: NodeId) -> None:
        """An origin left the network: free everything it held here."""
        for sequence_id in self._owners.pop(origin, set()):
            self._owner_of.pop(sequence_id, None)
            for segments in self.segments.values():
                for segment in segments:
                    segment.release(sequence_id)

    async def _sweep_idle(self) -> None:
        while True:
            await asyncio.sleep(IDLE_SEQUENCE_TIMEOUT_S / 10)
            for segments in self.segments.values():
                for segment in segments:
                    for sequence_id in segment.release_idle(IDLE_SEQUENCE_TIMEOUT_S):
                        owner = self._owner_of.pop(sequence_id, None)
                        if owner is not None:
                            self._owners.get(owner, set()).discard(sequence_id)


class OpenRequest(BaseModel):
    """The header of ``pipe.open``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    model_id: str = Field(max_length=MAX_MODEL_ID_BYTES)
    start: int = Field(ge=0)
    end: int = Field(ge=0)
    # The most tokens the sequence will hold (prompt + completion budget); None: the model's context.
    max_tokens: int | None = Field(default=None, ge=1)


def _open_request(header: Header) -> OpenRequest:
    if not isinstance(header, dict):
        raise RequestRefused(RefusalKind.INVALID, "pipe.open needs a header object")
    try:
        return OpenRequest.model_validate(header)
    except ValidationError as error:
        message = f"bad pipe.open header: {error.error_count()} invalid fields"
        raise RequestRefused(RefusalKind.INVALID, message) from None
