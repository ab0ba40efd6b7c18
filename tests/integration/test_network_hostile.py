"""Hostile input never takes a node off the network: real PeerNetworks on loopback.

Each test feeds one known trigger (a bad gossiped record, a deeply nested
handshake, a record flood, a squatted node id, a forged refusal...) to node
``a`` and then checks that ``a`` still serves: an existing peer's request is
answered and a brand new node can join.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import zmq
import zmq.asyncio
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from language_pipes.network.crypto import _COUNTER_NONCE, derive_lane_keys
from language_pipes.network.handshake import Greeting
from language_pipes.network.identity import NodeIdentity
from language_pipes.network.lanes import RequestPrefix
from language_pipes.network.membership import SignedRecord, sign_record
from language_pipes.network.peer_network import PeerNetwork
from language_pipes.network.session import data_associated_bytes
from language_pipes.network.types import HostedSegment, NodeId, NodeRecord, PeerRequestTimeout
from language_pipes.network.wire import encode_data_envelope, encode_handshake_envelope
from support.peers import Starter, wait_until

pytestmark = pytest.mark.asyncio

KIND_GOSSIP = "lp.gossip"


async def echo(sender: NodeId, header: Any, payload: bytes) -> tuple[dict[str, Any], bytes]:
    return {"from": sender}, payload


async def pair(start_node: Starter, **options: Any) -> tuple[PeerNetwork, PeerNetwork]:
    a = await start_node("a", **options)
    a.register_handler("echo", echo)
    b = await start_node("b", bootstrap=(a,), **options)
    await wait_until(lambda: "a" in b.records() and "b" in a.records(), what="a and b meeting")
    return a, b


async def assert_still_serving(a: PeerNetwork, b: PeerNetwork, start_node: Starter, name: str) -> None:
    """``b`` (already connected) and a fresh node both get answers from ``a``."""
    header, payload = await b.request(NodeId("a"), "echo", {}, b"ping", timeout=3.0)
    assert (header, payload) == ({"from": "b"}, b"ping")
    newcomer = await start_node(name, bootstrap=(a,))
    await wait_until(lambda: "a" in newcomer.records(), timeout=5.0, what=f"{name} joining a")
    header, _ = await newcomer.request(NodeId("a"), "echo", {}, b"", timeout=3.0)
    assert header == {"from": name}


def record_of(
    identity: NodeIdentity, address: str = "127.0.0.1", port: int = 1, **fields: Any
) -> SignedRecord:
    record = NodeRecord(
        node_id=identity.node_id,
        public_key=identity.public_key,
        address=address,
        port=port,
        segments=fields.get("segments", ()),
        end_models=(),
        load=fields.get("load", 0),
        version=1,
    )
    return sign_record(identity, record)


async def gossip(sender: PeerNetwork, target: str, entries: list[Any]) -> None:
    """Send one gossip message over ``sender``'s authenticated session (as a hostile member would)."""
    session = sender._peer_connections[NodeId(target)].session
    assert session is not None
    payload = json.dumps(entries).encode()
    await session.send(KIND_GOSSIP, "oneway", 0, b"", payload)


@contextlib.asynccontextmanager
async def raw_dealer(port: int) -> AsyncIterator[zmq.asyncio.Socket]:
    context = zmq.asyncio.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(f"tcp://127.0.0.1:{port}")
    try:
        yield socket
    finally:
        socket.close(linger=0)
        context.term()


async def test_a_gossiped_record_whose_address_is_not_a_host_is_dropped(start_node: Starter) -> None:
    a, b = await pair(start_node)
    await gossip(b, "a", [record_of(NodeIdentity.generate("evil"), address="x y").to_wire()])
    await asyncio.sleep(0.2)
    assert "evil" not in a._membership._records
    await assert_still_serving(a, b, start_node, "c")


async def test_a_hello_nested_100000_deep_is_dropped_and_counted(start_node: Starter) -> None:
    a, b = await pair(start_node)
    async with raw_dealer(a.peer_port) as intruder:
        await intruder.send_multipart([encode_handshake_envelope("hello", sealed=False), b"[" * 100_000])
        await asyncio.sleep(0.3)
    await wait_until(lambda: a.dropped_frames >= 1, what="the frame counted as dropped")
    await assert_still_serving(a, b, start_node, "c")


async def test_a_gossip_flood_of_1100_records_does_not_exhaust_sockets(start_node: Starter) -> None:
    a, b = await pair(start_node)
    flood = [record_of(NodeIdentity.generate(f"flood-{i}"), port=1000 + i).to_wire() for i in range(1100)]
    await gossip(b, "a", flood)
    await asyncio.sleep(0.5)
    assert len(a._outbound) <= 64
    assert len(a._membership._records) <= 200
    await assert_still_serving(a, b, start_node, "c")


async def test_gossip_within_the_bounds_is_limited_per_sender(start_node: Starter) -> None:
    a, b = await pair(start_node)
    flood = [record_of(NodeIdentity.generate(f"f-{i}"), port=2000 + i).to_wire() for i in range(400)]
    await gossip(b, "a", flood)
    await asyncio.sleep(0.3)
    unconnected = [node for node in a._membership._records if not a._membership.is_connected(node)]
    assert 0 < len(unconnected) <= 128
    await assert_still_serving(a, b, start_node, "c")


async def test_a_record_claiming_absurd_layers_is_rejected(start_node: Starter) -> None:
    a, b = await pair(start_node)
    liar = NodeIdentity.generate("liar")
    wire = record_of(liar, segments=(HostedSegment("m", 0, 10**12, loaded=True),)).to_wire()
    await gossip(b, "a", [wire])
    await asyncio.sleep(0.2)
    assert "liar" not in a._membership._records


async def test_a_squatter_hello_does_not_lock_out_the_real_node(start_node: Starter) -> None:
    a = await start_node("a")
    a.register_handler("echo", echo)
    squatted = Greeting(NodeId("b"), b"\x11" * 32, b"\x22" * 32, b"\x33" * 32)
    async with raw_dealer(a.peer_port) as squatter:
        frames = [encode_handshake_envelope("hello", sealed=False), json.dumps(squatted.to_wire()).encode()]
        await squatter.send_multipart(frames)
        await asyncio.wait_for(squatter.recv_multipart(), 2.0)  # the welcome; the squatter cannot sign auth
    b = await start_node("b", bootstrap=(a,))
    await wait_until(lambda: "b" in a.records() and "a" in b.records(), what="the real b joining")
    header, _ = await b.request(NodeId("a"), "echo", {}, b"", timeout=3.0)
    assert header == {"from": "b"}


async def test_an_unauthenticated_refuse_does_not_tear_down_a_session(
    start_node: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    a, b = await pair(start_node)
    lost: list[NodeId] = []
    b.on_peer_lost(lost.append)
    # A refuse carries no seal, so anyone on the path can forge one: put one on b's connection to a.
    (routing_id,) = [
        rid for rid, state in a._inbound.items() if state.session and state.session.peer_id == "b"
    ]
    refuse = [encode_handshake_envelope("refuse", sealed=False), b'{"reason":"unknown session"}']
    assert a._router is not None
    await a._router.send_multipart([routing_id, *refuse])
    await asyncio.sleep(0.3)
    assert lost == []
    assert b.is_live(NodeId("a"))
    header, _ = await b.request(NodeId("a"), "echo", {}, b"", timeout=3.0)
    assert header == {"from": "b"}


def _sealed_at_last_counter(key_cipher: Any, associated: bytes) -> bytes:
    """A part that authenticates at counter 2**64 - 1, the last one a nonce can hold."""
    return key_cipher.encrypt(_COUNTER_NONCE.pack(2**64 - 1), b"\x01\x00" + b"\x00" * 8, associated)


async def test_a_member_sending_the_last_counter_cannot_stop_the_peer_port(start_node: Starter) -> None:
    a, b = await pair(start_node)
    connection = b._peer_connections[NodeId("a")]
    assert connection.session is not None
    associated = data_associated_bytes("b", "echo")
    sealed = _sealed_at_last_counter(connection.session._sending._cipher, associated)
    await connection.socket.send_multipart([encode_data_envelope(2**64 - 1, "echo"), sealed, b"\x00" * 16])
    await asyncio.sleep(0.3)
    await assert_still_serving(a, b, start_node, "c")


async def test_a_member_sending_the_last_counter_cannot_stop_the_lane_thread(start_node: Starter) -> None:
    a, b = await pair(start_node, network_key=b"k" * 16)
    a.register_lane_handler("echo", lambda sender, header, payload: payload)
    assert await asyncio.to_thread(b.lane_request, NodeId("a"), "echo", b"", b"one", 5.0) == b"one"
    session = b._peer_connections[NodeId("a")].session
    assert session is not None and a._lane_server is not None
    prefix = RequestPrefix(session.lane_tag, 7, 2**64 - 1, "echo")
    request_key, _ = derive_lane_keys(session.lane_root, "b", 7)
    sealed = _sealed_at_last_counter(ChaCha20Poly1305(request_key), prefix.encode())
    async with raw_dealer(a._lane_server.port) as hostile:
        await hostile.send_multipart([prefix.encode(), sealed, b"\x00" * 16])
        await asyncio.sleep(0.3)
    assert await asyncio.to_thread(b.lane_request, NodeId("a"), "echo", b"", b"two", 5.0) == b"two"


async def test_an_oversized_frame_costs_the_sender_its_connection_only(start_node: Starter) -> None:
    a, b = await pair(start_node, max_message_bytes=1 << 16)
    async with raw_dealer(a.peer_port) as hostile:
        await hostile.send_multipart([encode_handshake_envelope("hello", sealed=False), b" " * (1 << 20)])
        await asyncio.sleep(0.3)
    await assert_still_serving(a, b, start_node, "c")
    with pytest.raises(PeerRequestTimeout):  # b's own oversized request is cut off too, not delivered
        await b.request(NodeId("a"), "echo", {}, b"x" * (1 << 17), timeout=1.0)


async def test_a_real_node_behind_a_burst_of_junk_records_is_still_dialled(start_node: Starter) -> None:
    a, b = await pair(start_node)
    lone = await start_node("lone")
    assert lone._own_record is not None
    junk = [record_of(NodeIdentity.generate(f"junk-{i}"), port=3000 + i).to_wire() for i in range(60)]
    await gossip(b, "a", [*junk, lone._own_record.to_wire()])
    await wait_until(lambda: "lone" in a.records(), timeout=6.0, what="a dialling the real node")
