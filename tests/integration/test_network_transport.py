"""PeerLink (network/transport.py) picks the transport: the step lane when offered, else peer messages.

Two PeerNetworks in this process on real ZeroMQ sockets; the same handler is
registered on the lane and on the peer network, and it reports which one ran
it (the lane thread or the event loop's compute). Requests are sent from a
worker thread, as the scheduler sends them.
"""

from __future__ import annotations

import asyncio

import pytest

from language_pipes.network.connections import Header
from language_pipes.network.peer_network import PeerNetwork
from language_pipes.network.transport import PeerLink
from language_pipes.network.types import NodeId
from support.peers import Starter, start_pair, wait_until

pytestmark = pytest.mark.asyncio


def answer_with_the_transport(a: PeerNetwork, posted: list[bytes]) -> None:
    def on_lane(sender: NodeId, header: bytes, payload: bytes) -> bytes:
        return b"lane:" + payload

    async def on_message(sender: NodeId, header: Header, payload: bytes) -> tuple[Header, bytes]:
        return {"via": "peer"}, b"peer:" + payload

    async def on_post(sender: NodeId, header: Header, payload: bytes) -> None:
        posted.append(payload)

    a.register_lane_handler("step", on_lane)
    a.register_handler("step", on_message)
    a.register_handler("note", on_post)


async def test_a_step_takes_the_lane_when_the_peer_offers_one(start_node: Starter) -> None:
    a, b = await start_pair(start_node)
    answer_with_the_transport(a, [])
    link = PeerLink(b, asyncio.get_running_loop(), NodeId("a"))
    assert await asyncio.to_thread(link.exchange, "step", b"h", b"x", 5.0) == b"lane:x"
    # A request with a JSON header always goes over the peer network.
    assert await asyncio.to_thread(link.request, "step", {"k": 1}, b"y", 5.0) == ({"via": "peer"}, b"peer:y")


async def test_a_step_takes_peer_messages_when_the_peer_has_no_lane(start_node: Starter) -> None:
    a, b = await start_pair(start_node, lane_port=None)
    posted: list[bytes] = []
    answer_with_the_transport(a, posted)
    link = PeerLink(b, asyncio.get_running_loop(), NodeId("a"))
    assert await asyncio.to_thread(link.exchange, "step", b"h", b"x", 5.0) == b"peer:x"
    await asyncio.to_thread(link.post, "note", b"", b"z")
    await wait_until(lambda: posted == [b"z"], what="the one-way message arriving")
    assert link.is_live()
