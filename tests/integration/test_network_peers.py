"""Several PeerNetwork instances in one process, talking over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from typing import Any

import pytest
import zmq
import zmq.asyncio

from language_pipes.network.identity import NodeIdentity
from language_pipes.network.peer_network import PeerNetwork
from language_pipes.network.types import (
    HostedSegment,
    NodeId,
    NotWhitelistedError,
    PeerLostError,
    PeerRequestFailed,
    PeerRequestTimeout,
    PeerUnavailableError,
)
from language_pipes.network.wire import encode_data_envelope
from support.peers import Starter, wait_until

NETWORK_LOGGER = "language_pipes.network.peer_network"


def collect(network: PeerNetwork, kind: str) -> list[tuple[NodeId, Any, bytes]]:
    received: list[tuple[NodeId, Any, bytes]] = []

    async def handler(sender: NodeId, header: Any, payload: bytes) -> None:
        received.append((sender, header, payload))

    network.register_handler(kind, handler)
    return received


@pytest.mark.asyncio
async def test_messages_arrive_attributed_to_the_authenticated_sender(start_node: Starter) -> None:
    key = os.urandom(16)
    a = await start_node("a", network_key=key)
    b = await start_node("b", network_key=key, bootstrap=(a,))
    await wait_until(lambda: "b" in a.records() and "a" in b.records(), what="a and b meeting")
    received = collect(a, "note")
    await b.send(NodeId("a"), "note", {"step": 1}, b"\x00\x01\x02")
    await b.send(NodeId("a"), "note", b"raw-header", b"")
    await wait_until(lambda: len(received) == 2)
    assert received == [("b", {"step": 1}, b"\x00\x01\x02"), ("b", b"raw-header", b"")]
    assert a.records()[NodeId("b")].public_key == b.records()[NodeId("b")].public_key


@pytest.mark.asyncio
async def test_request_with_one_megabyte_payload_round_trips_bit_exact(start_node: Starter) -> None:
    a = await start_node("a", network_key=os.urandom(16))
    b = await start_node("b", network_key=a._network_key, bootstrap=(a,))
    await wait_until(lambda: "a" in b.records())

    async def echo_reversed(sender: NodeId, header: Any, payload: bytes) -> tuple[dict[str, Any], bytes]:
        return {"sha256": hashlib.sha256(payload).hexdigest(), "sender": sender}, payload[::-1]

    a.register_handler("echo", echo_reversed)
    payload = os.urandom(1 << 20)
    header, reply = await b.request(NodeId("a"), "echo", {"n": 1}, memoryview(payload), timeout=5.0)
    assert header == {"sha256": hashlib.sha256(payload).hexdigest(), "sender": "b"}
    assert reply == payload[::-1]


@pytest.mark.asyncio
async def test_request_errors_are_clear(start_node: Starter) -> None:
    a = await start_node("a")
    b = await start_node("b", bootstrap=(a,))
    await wait_until(lambda: "a" in b.records())

    async def broken(sender: NodeId, header: Any, payload: bytes) -> None:
        raise RuntimeError("boom")

    async def slow(sender: NodeId, header: Any, payload: bytes) -> None:
        await asyncio.sleep(10)

    a.register_handler("broken", broken)
    a.register_handler("slow", slow)
    with pytest.raises(PeerRequestFailed, match="boom"):
        await b.request(NodeId("a"), "broken", {})
    with pytest.raises(PeerRequestFailed, match="no handler"):
        await b.request(NodeId("a"), "unknown-kind", {})
    with pytest.raises(PeerRequestTimeout, match="within 0.2 s"):
        await b.request(NodeId("a"), "slow", {}, timeout=0.2)
    with pytest.raises(PeerUnavailableError):
        await b.send(NodeId("nobody"), "note", {})


@pytest.mark.asyncio
async def test_three_nodes_discover_each_other_transitively(start_node: Starter) -> None:
    a = await start_node("a")
    b = await start_node("b", bootstrap=(a,))
    c = await start_node("c", bootstrap=(a,))
    await wait_until(lambda: all(set(n.records()) == {"a", "b", "c"} for n in (a, b, c)), what="full view")
    b.set_local_record(segments=[HostedSegment("smol", 0, 15, loaded=True)], end_models=["smol"], load=3)
    await wait_until(lambda: c.records()[NodeId("b")].load == 3, timeout=2.0, what="gossip of b's update")
    record = c.records()[NodeId("b")]
    assert record.segments == (HostedSegment("smol", 0, 15, loaded=True),)
    assert record.end_models == ("smol",)
    assert (record.address, record.port) == ("127.0.0.1", b.peer_port)
    # c and b talk directly although neither bootstrapped to the other.
    received = collect(b, "note")
    await c.send(NodeId("b"), "note", {"hello": "b"})
    await wait_until(lambda: received == [("c", {"hello": "b"}, b"")])


@pytest.mark.asyncio
async def test_a_stopped_peer_is_dropped_within_five_seconds(start_node: Starter) -> None:
    a = await start_node("a")
    b = await start_node("b", bootstrap=(a,))
    c = await start_node("c", bootstrap=(a,))
    await wait_until(lambda: all(len(n.records()) == 3 for n in (a, b, c)))
    lost: list[tuple[str, NodeId]] = []
    a.on_peer_lost(lambda node: lost.append(("a", node)))
    c.on_peer_lost(lambda node: lost.append(("c", node)))

    async def never_answers(sender: NodeId, header: Any, payload: bytes) -> None:
        await asyncio.sleep(60)

    b.register_handler("hang", never_answers)
    pending = asyncio.ensure_future(a.request(NodeId("b"), "hang", {}, timeout=30.0))
    await asyncio.sleep(0.1)
    await b.stop(announce=False)  # no goodbye: like a crash, only silence tells
    elapsed = await wait_until(
        lambda: "b" not in a.records() and "b" not in c.records(), timeout=6.0, what="b dropped"
    )
    assert elapsed <= 5.0
    assert sorted(lost) == [("a", "b"), ("c", "b")]
    with pytest.raises(PeerLostError):
        await pending
    with pytest.raises(PeerUnavailableError):
        await a.send(NodeId("b"), "note", {})


@pytest.mark.asyncio
async def test_graceful_leave_is_seen_at_once(start_node: Starter) -> None:
    a = await start_node("a")
    b = await start_node("b", bootstrap=(a,))
    await wait_until(lambda: "b" in a.records())
    await b.stop()
    assert await wait_until(lambda: "b" not in a.records(), timeout=1.0) < 1.0


@pytest.mark.asyncio
async def test_a_restarted_node_with_the_same_key_is_accepted_again(start_node: Starter) -> None:
    a = await start_node("a", failure_timeout_s=1.0)
    c = await start_node("c", bootstrap=(a,), failure_timeout_s=1.0)
    identity = NodeIdentity.generate("b")
    b = await start_node("b", identity=identity, bootstrap=(a,), failure_timeout_s=1.0)
    await wait_until(lambda: all(len(n.records()) == 3 for n in (a, b, c)))
    joined: list[NodeId] = []
    c.on_peer_joined(joined.append)
    await b.stop(announce=False)
    await wait_until(lambda: "b" not in a.records() and "b" not in c.records(), timeout=3.0)
    b_again = await start_node("b", identity=identity, bootstrap=(a,), failure_timeout_s=1.0)
    await wait_until(lambda: all(len(n.records()) == 3 for n in (a, b_again, c)), what="b rejoining")
    assert c.records()[NodeId("b")].port == b_again.peer_port
    assert joined == ["b"]
    received = collect(b_again, "note")
    await c.send(NodeId("b"), "note", {"again": True})
    await wait_until(lambda: len(received) == 1)


@pytest.mark.asyncio
async def test_wrong_network_key_never_joins_and_both_sides_log_it(
    start_node: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=NETWORK_LOGGER)
    a = await start_node("a", network_key=os.urandom(16))
    received = collect(a, "note")
    b = await start_node("b", network_key=os.urandom(16), bootstrap=(a,))
    await asyncio.sleep(1.5)
    assert set(a.records()) == {"a"} and set(b.records()) == {"b"}
    messages = [record.getMessage() for record in caplog.records]
    assert any(
        "rejected frame from 127.0.0.1: authentication failed (wrong network key?)" in m for m in messages
    )
    assert any(f"peer 127.0.0.1:{a.peer_port} refused us: network key mismatch" in m for m in messages)
    with pytest.raises(PeerUnavailableError):
        await b.send(NodeId("a"), "note", {})
    assert received == []


@pytest.mark.asyncio
@pytest.mark.parametrize("keyed_side", ["listener", "joiner"])
async def test_a_node_without_the_network_key_cannot_join(
    start_node: Starter, caplog: pytest.LogCaptureFixture, keyed_side: str
) -> None:
    caplog.set_level(logging.INFO, logger=NETWORK_LOGGER)
    key = os.urandom(16)
    a = await start_node("a", network_key=key if keyed_side == "listener" else None)
    b = await start_node("b", network_key=key if keyed_side == "joiner" else None, bootstrap=(a,))
    await asyncio.sleep(1.5)
    assert set(a.records()) == {"a"} and set(b.records()) == {"b"}
    messages = [record.getMessage() for record in caplog.records]
    assert any("authentication failed (wrong network key?)" in m for m in messages)
    assert any(f"peer 127.0.0.1:{a.peer_port} refused us: network key mismatch" in m for m in messages)


@pytest.mark.asyncio
async def test_a_forged_data_frame_without_a_session_is_not_delivered(start_node: Starter) -> None:
    a = await start_node("a", network_key=os.urandom(16))
    received = collect(a, "note")
    context = zmq.asyncio.Context()
    intruder = context.socket(zmq.DEALER)
    intruder.connect(f"tcp://127.0.0.1:{a.peer_port}")
    try:
        await intruder.send_multipart([encode_data_envelope(0, "note"), b"\x00" * 40, b"\x00" * 16])
        reply = await asyncio.wait_for(intruder.recv_multipart(), 2.0)
        assert b"unknown session" in reply[1]
    finally:
        intruder.close(linger=0)
        context.term()
    assert received == []


@pytest.mark.asyncio
async def test_whitelist_is_enforced_in_both_directions_and_on_gossip(
    start_node: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=NETWORK_LOGGER)
    c = await start_node("c")
    a = await start_node("a", whitelist={"a", "c"}, bootstrap=(c,))
    b = await start_node("b", bootstrap=(c,))
    await wait_until(lambda: set(c.records()) == {"a", "b", "c"})
    await asyncio.sleep(1.5)  # several gossip rounds: c tells a about b and b about a
    assert set(a.records()) == {"a", "c"}
    assert set(b.records()) == {"b", "c"}
    with pytest.raises(NotWhitelistedError):
        await a.send(NodeId("b"), "note", {})
    # Outbound too: a refuses to talk to b even when a dials b itself.
    a2 = await start_node("a2", whitelist={"a2"}, bootstrap=(b,))
    await asyncio.sleep(1.0)
    assert set(a2.records()) == {"a2"} and "a2" not in b.records()
    messages = [record.getMessage() for record in caplog.records]
    inbound_refusal = "refused node 'b' from 127.0.0.1: it is not in whitelist_node_ids"
    outbound_refusal = f"refused node 'b' from 127.0.0.1:{b.peer_port}: it is not in whitelist_node_ids"
    assert inbound_refusal in messages  # a, dialled by b
    assert outbound_refusal in messages  # a2, having dialled b
    assert any("refused us: not whitelisted" in m for m in messages)


@pytest.mark.asyncio
async def test_a_second_process_claiming_a_known_id_is_rejected(
    start_node: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=NETWORK_LOGGER)
    a = await start_node("a")
    b = await start_node("b", bootstrap=(a,))
    await wait_until(lambda: "b" in a.records())
    genuine_key = a.records()[NodeId("b")].public_key
    impostor = await start_node("b", bootstrap=(a,))  # same id, freshly generated key
    await asyncio.sleep(1.0)
    assert a.records()[NodeId("b")].public_key == genuine_key
    assert "a" not in impostor.records()
    messages = [record.getMessage() for record in caplog.records]
    assert any("refused node 'b'" in m and "identity key differs" in m for m in messages)
    assert any("refused us: identity key mismatch" in m for m in messages)
    assert b.is_live(NodeId("a"))


@pytest.mark.asyncio
async def test_a_replayed_frame_is_rejected(start_node: Starter, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=NETWORK_LOGGER)
    a = await start_node("a", network_key=os.urandom(16))
    b = await start_node("b", network_key=a._network_key, bootstrap=(a,))
    await wait_until(lambda: "a" in b.records())
    received = collect(a, "note")
    session = b._peer_connections[NodeId("a")].session
    assert session is not None
    captured: list[list[bytes]] = []
    original_transmit = session._transmit

    async def capturing_transmit(frames: Any) -> None:
        captured.append(list(frames))
        await original_transmit(frames)

    session._transmit = capturing_transmit
    await b.send(NodeId("a"), "note", {"pay": 100})
    await wait_until(lambda: len(received) == 1)
    await original_transmit(captured[0])  # the exact same bytes, again, on the same connection
    await b.send(NodeId("a"), "note", {"pay": 5})
    await wait_until(lambda: len(received) == 2)
    await asyncio.sleep(0.2)
    assert [header for _, header, _ in received] == [{"pay": 100}, {"pay": 5}]
    assert any("replayed or reordered frame" in record.getMessage() for record in caplog.records)
