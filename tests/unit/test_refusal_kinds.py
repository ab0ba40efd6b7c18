"""A refusal travels as a typed kind in the error reply: the origin words it, never with a peer's text.

Real PeerNetworks on loopback: ``a`` runs a real :class:`LayerWorker` over a
tiny llama's layers 1-3 (``max_node_jobs = 1``, a small KV budget) and ``b``
opens sequences on it, as an origin does. The scheduler's mapping turns the
kind into the client's words; a peer that writes misleading free text (say
"max_node_jobs" in an unrelated error) no longer changes what a client sees.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import torch

from language_pipes.engine.scheduler import refusal_for_client, refusal_of
from language_pipes.models.partial import ModelSource
from language_pipes.models.segment import KVBudgetExceededError, LayerSegment
from language_pipes.network.connections import Header
from language_pipes.network.peer_network import PeerNetwork
from language_pipes.network.types import NodeId, PeerRequestFailed, RefusalKind, RequestRefused
from language_pipes.pipes.frames import KIND_OPEN, encode_sequence_ids
from language_pipes.pipes.worker import LayerWorker
from language_pipes.vocabulary import SequenceId
from support.peers import Starter, start_pair
from support.tiny_models import build_tiny_model

MODEL = "tiny/llama"


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> ModelSource:
    folder = build_tiny_model("llama", Path(tmp_path_factory.mktemp("tiny")) / "llama")
    return ModelSource.open(folder)


async def refusal_opening(origin: PeerNetwork, max_tokens: int = 8, model: str = MODEL) -> PeerRequestFailed:
    header = {"model_id": model, "start": 1, "end": 4, "max_tokens": max_tokens}
    ids = encode_sequence_ids([SequenceId(uuid.uuid4().hex)])
    with pytest.raises(PeerRequestFailed) as refused:
        for _ in range(3):
            await origin.request(NodeId("a"), KIND_OPEN, header, ids, 5.0)
            ids = encode_sequence_ids([SequenceId(uuid.uuid4().hex)])
    return refused.value


@pytest.mark.asyncio
async def test_the_worker_sends_each_refusal_as_a_kind(start_node: Starter, tiny_source: ModelSource) -> None:
    a, b = await start_pair(start_node)
    worker = LayerWorker(a, max_node_jobs=1)
    segment = LayerSegment(tiny_source, 1, 4, torch.float32, torch.device("cpu"))
    segment.kv_budget_bytes = 16 * segment.kv_bytes_per_token
    worker.host(MODEL, segment)

    assert (await refusal_opening(b, max_tokens=8)).refusal is RefusalKind.BUSY
    worker.max_node_jobs = 10
    assert (await refusal_opening(b, max_tokens=12)).refusal is RefusalKind.NO_MEMORY
    assert (await refusal_opening(b, model="not/hosted")).refusal is RefusalKind.NOT_HOSTED
    worker.draining = True
    assert (await refusal_opening(b)).refusal is RefusalKind.LEAVING


@pytest.mark.asyncio
async def test_a_peers_free_text_never_picks_the_clients_words(start_node: Starter) -> None:
    a, b = await start_pair(start_node)

    async def misleading(sender: NodeId, header: Header, payload: bytes) -> None:
        raise RuntimeError("out of KV memory: max_node_jobs reached (not really)")

    async def typed(sender: NodeId, header: Header, payload: bytes) -> None:
        raise RequestRefused(RefusalKind.BUSY, "words the client must never see")

    a.register_handler("misleading", misleading)
    a.register_handler("typed", typed)
    with pytest.raises(PeerRequestFailed) as untyped:
        await b.request(NodeId("a"), "misleading", {}, b"", 5.0)
    assert untyped.value.refusal is None
    assert refusal_for_client(refusal_of(untyped.value)) == "The pipe refused the request."
    with pytest.raises(PeerRequestFailed) as busy:
        await b.request(NodeId("a"), "typed", {}, b"", 5.0)
    words = refusal_for_client(refusal_of(busy.value))
    assert words == "The pipe refused the request: a layer node holds max_node_jobs sequences of this node."
    assert "never see" not in words


def test_unknown_kinds_are_untyped_and_a_local_kv_refusal_is_no_memory() -> None:
    assert PeerRequestFailed("x").refusal is None
    assert refusal_of(KVBudgetExceededError("full")) is RefusalKind.NO_MEMORY
    assert refusal_of(ValueError("KV memory")) is None
    assert refusal_for_client(RefusalKind.NOT_OWNER) == "The pipe refused the request."
