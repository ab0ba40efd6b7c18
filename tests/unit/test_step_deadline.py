"""A layer node that stays connected but never answers a step cannot stall the origin.

``a`` accepts ``pipe.open`` but sits on every ``pipe.step`` (over its step lane
and over the peer network). The origin ``b`` runs a tiny llama's end model
with a real :class:`RemoteSegment` to ``a``: the step misses its deadline, the
hop counts as lost, and the request ends with a 503 after its bounded replays
instead of waiting 120 s per attempt.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import torch
from pydantic import ValidationError

from language_pipes.config import NodeConfig
from language_pipes.engine.generator import ModelGenerator
from language_pipes.engine.scheduler import MAX_REPLAYS, Scheduler
from language_pipes.engine.types import Finished, GenerationRequest, SamplingParams
from language_pipes.models.end_model import EndModel
from language_pipes.models.segment import SegmentBatch
from language_pipes.network.peer_network import Header, PeerNetwork, Reply
from language_pipes.network.types import NodeId, PeerRequestTimeout
from language_pipes.pipes.frames import KIND_OPEN, KIND_RELEASE, KIND_STEP
from language_pipes.pipes.remote import RemoteSegment
from language_pipes.pipes.route import Route
from language_pipes.vocabulary import SequenceId
from support.peers import Starter, wait_until
from support.tiny_models import build_tiny_model

DEADLINE_S = 0.4


@pytest.fixture(scope="module")
def tiny_end(tmp_path_factory: pytest.TempPathFactory) -> EndModel:
    folder = build_tiny_model("llama", Path(tmp_path_factory.mktemp("tiny")) / "llama")
    return EndModel("tiny", folder, num_local_layers=1, dtype=torch.float32)


@pytest_asyncio.fixture
async def silent_pair(start_node: Starter) -> AsyncIterator[tuple[PeerNetwork, PeerNetwork]]:
    """``a`` opens sequences but never answers a step; ``b`` is the origin."""
    key = os.urandom(16)
    a = await start_node("a", network_key=key)
    b = await start_node("b", network_key=key, bootstrap=(a,))
    await wait_until(lambda: "a" in b.records() and "b" in a.records(), what="a and b meeting")
    released = threading.Event()
    never = asyncio.Event()

    async def accept(sender: NodeId, header: Header, payload: bytes) -> Reply:
        return {"accepted": 1}, b""

    async def sit_on_it(sender: NodeId, header: Header, payload: bytes) -> Reply:
        await never.wait()
        return b"", b""

    async def ignore(sender: NodeId, header: Header, payload: bytes) -> None:
        return None

    def sit_on_lane(sender: NodeId, header: bytes, payload: bytes) -> bytes:
        released.wait(30)
        return b""

    a.register_handler(KIND_OPEN, accept)
    a.register_handler(KIND_STEP, sit_on_it)
    a.register_handler(KIND_RELEASE, ignore)
    a.register_lane_handler(KIND_STEP, sit_on_lane)
    try:
        yield a, b
    finally:
        released.set()
        never.set()


def remote_to_a(b: PeerNetwork, end: EndModel) -> RemoteSegment:
    return RemoteSegment(
        b,
        asyncio.get_running_loop(),
        NodeId("a"),
        "tiny",
        1,
        end.num_layers,
        torch.float32,
        step_timeout_s=DEADLINE_S,
        step_timeout_per_token_s=0.0,
    )


@pytest.mark.asyncio
async def test_a_step_that_gets_no_answer_fails_at_its_deadline(
    silent_pair: tuple[PeerNetwork, PeerNetwork], tiny_end: EndModel
) -> None:
    _, b = silent_pair
    remote = remote_to_a(b, tiny_end)
    batch = SegmentBatch((SequenceId("ab" * 16),), (0,), (3,))
    started = time.monotonic()
    with pytest.raises(PeerRequestTimeout):
        await asyncio.to_thread(remote.forward, torch.zeros(1, 3, 64), batch)
    assert time.monotonic() - started < DEADLINE_S + 2.0


@pytest.mark.asyncio
async def test_a_request_through_a_silent_node_ends_with_503_instead_of_waiting(
    silent_pair: tuple[PeerNetwork, PeerNetwork], tiny_end: EndModel
) -> None:
    _, b = silent_pair
    route = Route([remote_to_a(b, tiny_end)], name="through a")
    scheduler = Scheduler(tiny_end, lambda: route)
    scheduler.start()
    try:
        generator = ModelGenerator(tiny_end, scheduler)
        request = GenerationRequest([1, 5, 7, 9], SamplingParams(temperature=0.0), max_new_tokens=4)
        started = time.monotonic()
        events = [event async for event in generator.generate(request)]
        elapsed = time.monotonic() - started
    finally:
        await asyncio.to_thread(scheduler.stop)
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert (finished.reason, finished.failure) == ("error", "unavailable")  # the API answers 503
    # One deadline per attempt, a few attempts: seconds, not 120 s per attempt.
    assert elapsed < (MAX_REPLAYS + 1) * (DEADLINE_S + 1.0) + 2.0


def test_the_deadline_config_keys_default_well_under_ten_seconds_per_decode_step() -> None:
    config = NodeConfig(node_id="a")
    assert (config.step_timeout_s, config.step_timeout_per_token_s) == (5.0, 0.1)
    assert NodeConfig(node_id="a", step_timeout_s=1.5).step_timeout_s == 1.5
    with pytest.raises(ValidationError):
        NodeConfig(node_id="a", step_timeout_s=0)


@pytest.mark.asyncio
async def test_a_long_prefill_step_gets_more_time_than_a_decode_step(
    silent_pair: tuple[PeerNetwork, PeerNetwork],
) -> None:
    _, b = silent_pair
    remote = RemoteSegment(b, asyncio.get_running_loop(), NodeId("a"), "m", 1, 4, torch.float32)
    decode = SegmentBatch((SequenceId("ab" * 16),), (9,), (1,))
    prefill = SegmentBatch((SequenceId("ab" * 16),), (0,), (512,))
    assert remote.step_deadline_s(decode) == pytest.approx(5.1)
    assert remote.step_deadline_s(prefill) == pytest.approx(5.0 + 51.2)
