"""Fuzzing the layer worker's step handler with mutated real frames: it refuses cleanly and keeps serving.

The worker runs in-process around an unstarted PeerNetwork (only its handler
table is used); steps go straight to ``LayerWorker._run_step`` as the lane
thread calls it. 50 inputs, no deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from language_pipes.models.partial import ModelSource
from language_pipes.models.segment import LayerSegment, SegmentBatch
from language_pipes.network.identity import NodeIdentity
from language_pipes.network.peer_network import PeerNetwork
from language_pipes.network.types import NodeId
from language_pipes.pipes.frames import StepHeader, encode_sequence_ids, encode_step, tensor_bytes
from language_pipes.pipes.worker import LayerWorker
from language_pipes.vocabulary import SequenceId
from support.tiny_models import build_tiny_model

MODEL = "tiny/llama"
ORIGIN = NodeId("origin")
# What a refused step may raise (each becomes an error reply to the origin).
REFUSALS = (ValueError, LookupError)


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> LayerWorker:
    folder = build_tiny_model("llama", Path(tmp_path_factory.mktemp("tiny")) / "llama")
    segment = LayerSegment(ModelSource.open(folder), 1, 4, torch.float32, torch.device("cpu"))
    segment.kv_budget_bytes = 2048 * segment.kv_bytes_per_token
    layer_worker = LayerWorker(PeerNetwork(NodeIdentity.generate("layers")), max_node_jobs=8)
    layer_worker.host(MODEL, segment)
    return layer_worker


def open_sequence(worker: LayerWorker, sequence_id: SequenceId) -> None:
    header = {"model_id": MODEL, "start": 1, "end": 4, "max_tokens": 64}
    asyncio.run(worker._on_open(ORIGIN, header, encode_sequence_ids([sequence_id])))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    tokens=st.integers(min_value=1, max_value=4),
    start=st.integers(min_value=0, max_value=70),
    flips=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
    payload_cut=st.integers(min_value=-8, max_value=8),
)
def test_mutated_steps_are_answered_or_refused_and_the_worker_keeps_serving(
    worker: LayerWorker, tokens: int, start: int, flips: list[tuple[int, int]], payload_cut: int
) -> None:
    sequence_id = SequenceId(uuid.uuid4().hex)
    open_sequence(worker, sequence_id)
    batch = SegmentBatch((sequence_id,), (start,), (tokens,))
    header = bytearray(encode_step(StepHeader(MODEL, 1, 4, torch.float32, 64, batch)))
    for position, value in flips:
        header[position % len(header)] = value
    payload = bytes(tensor_bytes(torch.randn(1, tokens, 64)))
    payload = payload[:payload_cut] if payload_cut < 0 else payload + b"\x01" * payload_cut
    with contextlib.suppress(*REFUSALS):
        worker._run_step(ORIGIN, bytes(header), payload)
    # Whatever came before, a well-formed step of a fresh sequence is served.
    fresh = SequenceId(uuid.uuid4().hex)
    open_sequence(worker, fresh)
    good = encode_step(StepHeader(MODEL, 1, 4, torch.float32, 64, SegmentBatch((fresh,), (0,), (2,))))
    assert len(worker._run_step(ORIGIN, good, bytes(tensor_bytes(torch.randn(1, 2, 64))))) == 2 * 64 * 4
    worker.forget_origin(ORIGIN)
    assert worker.segments[MODEL][0].reserved_tokens() == 0
