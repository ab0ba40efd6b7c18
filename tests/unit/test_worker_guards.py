"""The layer worker refuses what a hostile or broken origin sends, and keeps serving the others.

Real PeerNetworks on loopback (``a`` hosts a tiny llama's layers 1-3 behind a
:class:`LayerWorker`; ``b`` and ``c`` are two origins) exchange real pipe
frames: a sequence belongs to the origin that opened it, step headers are
bounded before anything is allocated, and KV memory is reserved for each
sequence's maximum length at open.
"""

from __future__ import annotations

import asyncio
import os
import struct
import uuid
from pathlib import Path

import pytest
import torch

from language_pipes.models.partial import ModelSource
from language_pipes.models.segment import LayerSegment, SegmentBatch
from language_pipes.network.peer_network import PeerNetwork
from language_pipes.network.types import NodeId, PeerRequestFailed
from language_pipes.pipes.frames import (
    KIND_OPEN,
    KIND_RELEASE,
    KIND_STEP,
    StepHeader,
    encode_sequence_ids,
    encode_step,
    tensor_bytes,
)
from language_pipes.pipes.worker import LayerWorker
from language_pipes.vocabulary import SequenceId
from support.peers import Starter, wait_until
from support.tiny_models import build_tiny_model

pytestmark = pytest.mark.asyncio

MODEL = "tiny/llama"
HIDDEN = 64
LAYER_NODE = NodeId("a")


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> ModelSource:
    folder = build_tiny_model("llama", Path(tmp_path_factory.mktemp("tiny")) / "llama")
    return ModelSource.open(folder)


async def cluster(
    start_node: Starter, source: ModelSource, budget_tokens: int | None = None
) -> tuple[LayerWorker, LayerSegment, PeerNetwork, PeerNetwork]:
    key = os.urandom(16)
    a = await start_node("a", network_key=key)
    b = await start_node("b", network_key=key, bootstrap=(a,))
    c = await start_node("c", network_key=key, bootstrap=(a,))
    await wait_until(lambda: {"b", "c"} <= set(a.records()), what="both origins meeting the layer node")
    worker = LayerWorker(a, max_node_jobs=4)
    segment = LayerSegment(source, 1, 4, torch.float32, torch.device("cpu"))
    if budget_tokens is not None:
        segment.kv_budget_bytes = budget_tokens * segment.kv_bytes_per_token
    worker.host(MODEL, segment)
    return worker, segment, b, c


def new_id() -> SequenceId:
    return SequenceId(uuid.uuid4().hex)


async def open_on(origin: PeerNetwork, sequence_id: SequenceId, max_tokens: int | None = None) -> None:
    header: dict[str, object] = {"model_id": MODEL, "start": 1, "end": 4}
    if max_tokens is not None:
        header["max_tokens"] = max_tokens
    await origin.request(LAYER_NODE, KIND_OPEN, header, encode_sequence_ids([sequence_id]), 5.0)


async def step_on(origin: PeerNetwork, sequence_id: SequenceId, start: int, tokens: int) -> torch.Tensor:
    batch = SegmentBatch((sequence_id,), (start,), (tokens,))
    header = encode_step(StepHeader(MODEL, 1, 4, torch.float32, HIDDEN, batch))
    hidden = torch.randn(1, tokens, HIDDEN)
    _, payload = await origin.request(LAYER_NODE, KIND_STEP, header, tensor_bytes(hidden), 5.0)
    return torch.frombuffer(bytearray(payload), dtype=torch.float32)


async def release_on(origin: PeerNetwork, sequence_id: SequenceId) -> None:
    await origin.send(LAYER_NODE, KIND_RELEASE, b"", encode_sequence_ids([sequence_id]))
    await asyncio.sleep(0.2)  # release is fire and forget: give it time to arrive


async def test_another_origin_can_neither_release_nor_step_nor_co_own_a_sequence(
    start_node: Starter, tiny_source: ModelSource
) -> None:
    worker, segment, b, c = await cluster(start_node, tiny_source)
    sequence_id = new_id()
    await open_on(b, sequence_id)
    await step_on(b, sequence_id, 0, 3)

    with pytest.raises(PeerRequestFailed, match="another origin"):
        await open_on(c, sequence_id)
    with pytest.raises(PeerRequestFailed, match="not opened"):
        await step_on(c, sequence_id, 3, 1)
    await release_on(c, sequence_id)

    assert segment.sequence_count == 1  # c's release freed nothing of b's
    assert worker.sequence_count == 1
    assert (await step_on(b, sequence_id, 3, 1)).numel() == HIDDEN  # b's sequence goes on
    await release_on(b, sequence_id)
    assert segment.sequence_count == 0 and worker.sequence_count == 0
    await open_on(c, sequence_id)  # a released id is free for anyone again


async def test_a_step_header_with_a_huge_count_is_refused_and_the_worker_keeps_serving(
    start_node: Starter, tiny_source: ModelSource
) -> None:
    _, _, b, _ = await cluster(start_node, tiny_source)
    model = MODEL.encode()
    hostile = struct.pack("!HHHBII", len(model), 1, 4, 3, HIDDEN, 2**32 - 1) + model + b"\x00" * 24
    with pytest.raises(PeerRequestFailed, match="at most"):
        await b.request(LAYER_NODE, KIND_STEP, hostile, b"", 5.0)
    huge_hidden = struct.pack("!HHHBII", len(model), 1, 4, 3, 2**31, 0) + model
    with pytest.raises(PeerRequestFailed, match="hidden size"):
        await b.request(LAYER_NODE, KIND_STEP, huge_hidden, b"", 5.0)
    sequence_id = new_id()
    await open_on(b, sequence_id)
    assert (await step_on(b, sequence_id, 0, 2)).numel() == 2 * HIDDEN


async def test_a_step_whose_payload_or_hidden_size_does_not_match_is_refused(
    start_node: Starter, tiny_source: ModelSource
) -> None:
    _, segment, b, _ = await cluster(start_node, tiny_source)
    sequence_id = new_id()
    await open_on(b, sequence_id)
    batch = SegmentBatch((sequence_id,), (0,), (4,))
    header = encode_step(StepHeader(MODEL, 1, 4, torch.float32, HIDDEN, batch))
    with pytest.raises(PeerRequestFailed, match="payload"):
        await b.request(LAYER_NODE, KIND_STEP, header, b"\x00" * (4 * 4 * HIDDEN * 2), 5.0)
    wrong = encode_step(StepHeader(MODEL, 1, 4, torch.float32, 32, batch))
    with pytest.raises(PeerRequestFailed, match="hidden size"):
        await b.request(LAYER_NODE, KIND_STEP, wrong, b"\x00" * (4 * 4 * 32), 5.0)
    assert segment.sequence_count == 0  # nothing reached a cache


async def test_positions_beyond_the_context_are_refused(
    start_node: Starter, tiny_source: ModelSource
) -> None:
    _, segment, b, _ = await cluster(start_node, tiny_source)
    sequence_id = new_id()
    await open_on(b, sequence_id)
    assert segment.context_length == 512
    with pytest.raises(PeerRequestFailed, match="may hold 512"):
        await step_on(b, sequence_id, 510, 4)
    with pytest.raises(PeerRequestFailed, match="1 to 512"):
        await open_on(b, new_id(), max_tokens=10_000)


async def test_kv_memory_is_reserved_at_open_and_a_sequence_cannot_outgrow_it(
    start_node: Starter, tiny_source: ModelSource
) -> None:
    _, segment, b, c = await cluster(start_node, tiny_source, budget_tokens=100)
    first, second = new_id(), new_id()
    await open_on(b, first, max_tokens=80)
    with pytest.raises(PeerRequestFailed, match="KV cache"):
        await open_on(c, second, max_tokens=40)  # 80 + 40 reserved tokens would exceed the 100 budgeted
    assert segment.reserved_tokens() == 80
    await step_on(b, first, 0, 70)
    with pytest.raises(PeerRequestFailed, match="may hold 80"):
        await step_on(b, first, 70, 11)  # past its reservation, although the budget has room
    await step_on(b, first, 70, 10)
    assert segment.cache_nbytes() <= segment.kv_budget_bytes  # type: ignore[operator]
    await open_on(c, second, max_tokens=20)  # what is left is still there for others
    await release_on(b, first)
    assert segment.reserved_tokens() == 20


async def test_a_step_rolls_back_only_its_own_origins_sequence_and_never_skips_ahead(
    start_node: Starter, tiny_source: ModelSource
) -> None:
    """Speculative decoding's rollback: a step that starts inside the cache cuts it back to its start.

    Only the origin that opened the sequence can do that; a start past the
    cache's end is refused and changes nothing.
    """
    _, segment, b, c = await cluster(start_node, tiny_source)
    sequence_id = new_id()
    await open_on(b, sequence_id)
    await step_on(b, sequence_id, 0, 3)
    await step_on(b, sequence_id, 3, 5)  # the last token plus four drafts
    assert segment._caches[sequence_id].length == 8
    await step_on(b, sequence_id, 4, 1)  # one draft accepted: the next step starts at position 4
    assert segment._caches[sequence_id].length == 5

    with pytest.raises(PeerRequestFailed, match="not opened"):
        await step_on(c, sequence_id, 1, 1)  # another origin cannot cut b's sequence back
    with pytest.raises(PeerRequestFailed):
        await step_on(b, sequence_id, 9, 1)  # past the cache's end: nothing to continue from
    assert segment._caches[sequence_id].length == 5
    await release_on(b, sequence_id)


async def test_an_unloaded_segment_leaves_no_claim_on_its_opened_but_unstepped_sequences(
    start_node: Starter, tiny_source: ModelSource
) -> None:
    worker, segment, b, _ = await cluster(start_node, tiny_source)
    stepped, opened_only = new_id(), new_id()
    await open_on(b, stepped)
    await step_on(b, stepped, 0, 3)
    await open_on(b, opened_only)  # reserved, no cache yet: an unload's drain does not see it
    assert worker.sequence_count == 2 and segment.sequence_count == 1
    worker.forget_unhosted()
    assert worker.sequence_count == 2  # both still live in a hosted segment
    segment.release(stepped)
    worker.segments.pop(MODEL)  # what Node.unload_layer_model does once the caches drained
    worker.forget_unhosted()
    assert worker.sequence_count == 0
