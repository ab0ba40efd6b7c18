"""Step lanes between PeerNetworks in this process: real ZeroMQ sockets on 127.0.0.1, real keys.

A lane request is blocking, so each test sends it from a worker thread
(``asyncio.to_thread``), as the scheduler does, while the event loop keeps the
peer networks running.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time

import pytest
import zmq

from language_pipes.network.lanes import STATUS_UNKNOWN, LaneClient, ReplyPrefix, RequestPrefix
from language_pipes.network.types import NodeId, PeerLostError, PeerRequestFailed
from support.node_process import free_port
from support.peers import Starter, start_pair

pytestmark = pytest.mark.asyncio


def reversing_handler(calls: list[tuple[str, str, bytes]]):  # type: ignore[no-untyped-def]
    def handler(sender: NodeId, header: bytes, payload: bytes) -> bytes:
        calls.append((sender, threading.current_thread().name, header))
        return payload[::-1]

    return handler


async def test_a_lane_request_runs_on_the_lane_thread_and_round_trips(start_node: Starter) -> None:
    a, b = await start_pair(start_node)
    calls: list[tuple[str, str, bytes]] = []
    a.register_lane_handler("echo", reversing_handler(calls))
    payload = os.urandom(64 * 1024)
    for index in range(3):
        reply = await asyncio.to_thread(
            b.lane_request, NodeId("a"), "echo", f"header {index}".encode(), payload, 5.0
        )
        assert reply == payload[::-1]
    assert calls == [("b", "step-lanes", f"header {index}".encode()) for index in range(3)]
    assert b.records()[NodeId("a")].lane_port == a._lane_server.port  # type: ignore[union-attr]


async def test_a_failing_handler_reaches_the_origin_as_a_clear_error(start_node: Starter) -> None:
    a, b = await start_pair(start_node)

    def broken(sender: NodeId, header: bytes, payload: bytes) -> bytes:
        raise LookupError("no such segment")

    a.register_lane_handler("step", broken)
    with pytest.raises(PeerRequestFailed, match="LookupError: no such segment"):
        await asyncio.to_thread(b.lane_request, NodeId("a"), "step", b"", b"x", 5.0)
    a.register_lane_handler("step", reversing_handler([]))
    assert await asyncio.to_thread(b.lane_request, NodeId("a"), "step", b"", b"ab", 5.0) == b"ba"


async def test_a_configured_lane_port_is_bound_and_announced(start_node: Starter) -> None:
    port = free_port()
    a, b = await start_pair(start_node, lane_port=port)
    assert b.records()[NodeId("a")].lane_port == port
    a.register_lane_handler("echo", reversing_handler([]))
    assert await asyncio.to_thread(b.lane_request, NodeId("a"), "echo", b"", b"xy", 5.0) == b"yx"


async def test_a_node_without_lanes_gets_none_so_the_peer_network_carries_it(start_node: Starter) -> None:
    a, b = await start_pair(start_node, lane_port=None)
    assert b.records()[NodeId("a")].lane_port is None
    assert await asyncio.to_thread(b.lane_request, NodeId("a"), "echo", b"", b"x", 5.0) is None


async def test_an_unanswered_lane_port_falls_back_within_the_probe_time(
    start_node: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="language_pipes.network.lanes")
    a, b = await start_pair(start_node)
    a._lane_server.stop()  # type: ignore[union-attr]  # the port is announced, nobody answers
    started = time.monotonic()
    assert await asyncio.to_thread(b.lane_request, NodeId("a"), "echo", b"", b"x", 5.0) is None
    assert time.monotonic() - started < 3.0
    assert "its pipe steps go over the peer network" in caplog.text
    started = time.monotonic()  # remembered: the next request does not wait for another probe
    assert await asyncio.to_thread(b.lane_request, NodeId("a"), "echo", b"", b"x", 5.0) is None
    assert time.monotonic() - started < 0.5


async def test_forged_and_replayed_lane_frames_are_refused_and_never_reach_the_handler(
    start_node: Starter,
) -> None:
    a, b = await start_pair(start_node)
    calls: list[tuple[str, str, bytes]] = []
    a.register_lane_handler("echo", reversing_handler(calls))
    session = b._peer_connections[NodeId("a")].session
    assert session is not None
    port = a._lane_server.port  # type: ignore[union-attr]
    context = zmq.Context()
    try:
        # A genuine lane, whose first request we capture on the wire and send again.
        sent: list[list[bytes]] = []
        client = LaneClient(context, session, "127.0.0.1", port)
        original_send = client._socket.send_multipart

        def capture(frames: list[bytes], **options: object) -> None:
            sent.append([bytes(frame) for frame in frames])
            original_send(frames, **options)

        client._socket.send_multipart = capture  # type: ignore[method-assign]
        reply = await asyncio.to_thread(client.request, "echo", b"once", b"abc", 5.0, lambda: None)
        assert reply == b"cba" and len(calls) == 1
        client.close()

        raw = context.socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(f"tcp://127.0.0.1:{port}")
        # 1. The captured request, replayed.
        raw.send_multipart(sent[0])
        # 2. A frame naming the right session but sealed with keys nobody derived from it.
        forged = RequestPrefix(session.lane_tag, 7, 0, "echo").encode()
        raw.send_multipart([forged, os.urandom(32), os.urandom(48)])
        # 3. A frame naming no session at all.
        unknown = RequestPrefix(os.urandom(16), 7, 0, "echo").encode()
        raw.send_multipart([unknown, os.urandom(32), os.urandom(48)])
        replies = []
        for _ in range(3):
            assert await asyncio.to_thread(raw.poll, 5000)
            replies.append(raw.recv_multipart())
        raw.close()
    finally:
        context.destroy(linger=0)
    assert [ReplyPrefix.decode(reply[0]).status for reply in replies] == [STATUS_UNKNOWN] * 3
    assert [reply[1] for reply in replies] == [
        b"frame rejected",
        b"frame rejected",
        b"no open session for this lane",
    ]
    assert len(calls) == 1


async def test_a_lost_peer_ends_a_waiting_lane_request(start_node: Starter) -> None:
    a, b = await start_pair(start_node)
    release = threading.Event()

    def slow(sender: NodeId, header: bytes, payload: bytes) -> bytes:
        release.wait(10)
        return b""

    a.register_lane_handler("step", slow)
    waiting = asyncio.ensure_future(asyncio.to_thread(b.lane_request, NodeId("a"), "step", b"", b"", 60.0))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await a.leave()  # b drops a at once
    with pytest.raises(PeerLostError, match="'a' was lost"):
        await waiting
    assert time.monotonic() - started < 1.0
    release.set()
