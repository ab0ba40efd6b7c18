"""Big payloads are sealed off the event loop on low-priority threads, and still leave in counter order."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence

import pytest

from language_pipes.network.bulk import BULK_NICE, BULK_SEAL_BYTES, run_bulk
from language_pipes.network.session import Session
from language_pipes.network.types import NodeId
from language_pipes.network.wire import decode_envelope


def _pair(sent: list[list[bytes]]) -> tuple[Session, Session]:
    forward, backward = os.urandom(32), os.urandom(32)

    async def transmit(frames: Sequence[bytes]) -> None:
        sent.append(list(frames))

    async def nowhere(frames: Sequence[bytes]) -> None:
        raise AssertionError("the receiving side sends nothing here")

    sender = Session(NodeId("a"), NodeId("b"), "127.0.0.1", forward, backward, transmit, is_client=True)
    receiver = Session(NodeId("b"), NodeId("a"), "127.0.0.1", backward, forward, nowhere, is_client=False)
    return sender, receiver


@pytest.mark.asyncio
async def test_messages_after_a_big_one_wait_for_it_and_every_frame_opens_in_order() -> None:
    sent: list[list[bytes]] = []
    sender, receiver = _pair(sent)
    big = os.urandom(BULK_SEAL_BYTES * 2)
    await asyncio.gather(
        sender.send("weights.piece", "response", 1, {"ok": True}, big),
        sender.send("small", "request", 2, {}, b"after the big one"),
        sender.send("weights.piece", "response", 3, {"ok": True}, big[:BULK_SEAL_BYTES]),
        sender.send("small", "oneway", 4, {}, b"last"),
    )
    await sender.send("small", "oneway", 5, {}, b"quiet again")  # the plain path once nothing is pending

    opened = [receiver.open(decode_envelope(frames[0]), frames[1], frames[2]) for frames in sent]
    assert [inner.correlation_id for inner, _ in opened] == [1, 2, 3, 4, 5]
    payloads = [payload for _, payload in opened]
    assert payloads == [big, b"after the big one", big[:BULK_SEAL_BYTES], b"last", b"quiet again"]


@pytest.mark.asyncio
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
async def test_bulk_work_runs_at_a_lower_priority_than_the_loop() -> None:
    loop_nice = os.getpriority(os.PRIO_PROCESS, 0)
    bulk_nice = await run_bulk(os.getpriority, os.PRIO_PROCESS, 0)
    assert bulk_nice == max(loop_nice, BULK_NICE)
    assert os.getpriority(os.PRIO_PROCESS, 0) == loop_nice  # the calling thread keeps its own
