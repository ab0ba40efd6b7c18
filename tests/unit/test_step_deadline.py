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
from concurrent.futures import ThreadPoolExecutor
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


SLOW_STEP_S = 1.2


@pytest_asyncio.fixture
async def serial_pair(start_node: Starter) -> AsyncIterator[tuple[PeerNetwork, PeerNetwork, threading.Event]]:
    """``a`` answers steps one at a time on its lane thread, as a layer node does; big steps take 1.2 s."""
    key = os.urandom(16)
    a = await start_node("a", network_key=key)
    b = await start_node("b", network_key=key, bootstrap=(a,))
    await wait_until(lambda: "a" in b.records() and "b" in a.records(), what="a and b meeting")
    big_step_started = threading.Event()

    def echo(sender: NodeId, header: bytes, payload: bytes) -> bytes:
        if len(payload) > 4 * 64 * 16:  # more than 16 fp32 rows of 64: the prefill chunk
            big_step_started.set()
            time.sleep(SLOW_STEP_S)
        return bytes(payload)

    a.register_lane_handler(KIND_STEP, echo)
    yield a, b, big_step_started


@pytest.mark.asyncio
async def test_a_step_queued_behind_the_other_lanes_step_does_not_miss_its_deadline(
    serial_pair: tuple[PeerNetwork, PeerNetwork, threading.Event],
) -> None:
    """Two lanes share one layer node, which runs one step at a time: the decode step that waits
    behind the other lane's long prefill step gets that step's time too, instead of failing the route."""
    _, b, big_step_started = serial_pair
    loop = asyncio.get_running_loop()

    def remote() -> RemoteSegment:  # each lane (thread) has its own route objects to the same node
        return RemoteSegment(
            b, loop, NodeId("a"), "m", 1, 4, torch.float32, step_timeout_s=0.4, step_timeout_per_token_s=0.01
        )

    prefill = SegmentBatch((SequenceId("aa" * 16),), (0,), (512,))  # allowed 0.4 + 5.12 s
    decode = SegmentBatch((SequenceId("bb" * 16),), (30,), (1,))  # allowed 0.41 s, but waits 1.2 s
    lanes = [ThreadPoolExecutor(max_workers=1) for _ in range(2)]  # a lane is a thread with its own socket
    remotes = [remote(), remote()]
    try:
        for lane, hop in zip(lanes, remotes, strict=True):  # open each thread's lane before the race
            await loop.run_in_executor(lane, hop.forward, torch.ones(1, 1, 64), decode)
        long_step = loop.run_in_executor(lanes[0], remotes[0].forward, torch.zeros(1, 512, 64), prefill)
        assert await asyncio.to_thread(big_step_started.wait, 10)
        decoded = await loop.run_in_executor(lanes[1], remotes[1].forward, torch.ones(1, 1, 64), decode)
        assert torch.equal(decoded, torch.ones(1, 1, 64))
        assert (await long_step).shape == (1, 512, 64)
    finally:
        for lane in lanes:
            lane.shutdown()
