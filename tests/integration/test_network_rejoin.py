"""A peer that dropped us on its side alone (its loop stalled past the timeout) is rejoined."""

from __future__ import annotations

import os

import pytest

from language_pipes.network.types import NodeId
from support.peers import Starter, wait_until


@pytest.mark.asyncio
async def test_a_one_sided_drop_heals_in_both_directions(start_node: Starter) -> None:
    key = os.urandom(16)
    a = await start_node("a", network_key=key, failure_timeout_s=1.0)
    b = await start_node("b", network_key=key, failure_timeout_s=1.0, bootstrap=(a,))
    await wait_until(lambda: b.is_live(NodeId("a")) and a.is_live(NodeId("b")), what="a and b meeting")
    b._drop_peer(NodeId("a"), "a stalled past the timeout (as b saw it)")  # a never hears of it
    await wait_until(lambda: b.is_live(NodeId("a")) and a.is_live(NodeId("b")), timeout=6.0, what="rejoining")
    received = []

    async def handler(sender: NodeId, header: object, payload: bytes) -> None:
        received.append(sender)

    b.register_handler("note", handler)
    await a.send(NodeId("b"), "note", {}, b"")
    await wait_until(lambda: received == ["a"], what="a's message reaching b")
