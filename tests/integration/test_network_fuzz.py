"""Fuzzing the network with hypothesis: decoders, handshake and gossip under random and mutated frames.

Two real PeerNetworks (``a`` under attack, ``b`` its authenticated peer) run on
an event loop in a background thread for the whole module; each example
sends hostile bytes to ``a`` (unauthenticated to the peer and lane ports, or
sealed over ``b``'s session), and the property is that no receive loop dies
(no supervisor restart) and ``a`` keeps answering ``b``. Bounded: about
:data:`EXAMPLES` inputs per test, well under 20 s in all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from language_pipes.network.handshake import Greeting, HandshakeSide
from language_pipes.network.identity import NodeIdentity
from language_pipes.network.lanes import ReplyPrefix, RequestPrefix
from language_pipes.network.membership import SignedRecord, sign_record
from language_pipes.network.peer_network import PeerNetwork
from language_pipes.network.session import data_associated_bytes
from language_pipes.network.types import HostedSegment, NodeId, NodeRecord
from language_pipes.network.wire import (
    MalformedFrame,
    decode_envelope,
    decode_inner_header,
    encode_data_envelope,
    encode_handshake_envelope,
    loads_bounded,
)

EXAMPLES = 200
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)
frame_types = st.sampled_from(["hello", "welcome", "auth", "ready", "refuse"])


def mutate(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    """``data`` with some bytes replaced (positions wrap around), the way a fuzzer corrupts input."""
    mutable = bytearray(data)
    for position, value in flips:
        if mutable:
            mutable[position % len(mutable)] = value
    return bytes(mutable)


byte_flips = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=6)


class Cluster:
    """``a`` and ``b`` on a background event loop; :meth:`run` executes a coroutine there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.a, self.b = self.run(self._start())
        self.context = zmq.Context()
        self.intruder = self._dealer(self.a.peer_port)
        assert self.a._lane_server is not None
        self.lane_intruder = self._dealer(self.a._lane_server.port)

    def _dealer(self, port: int) -> zmq.Socket[bytes]:
        socket = self.context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(f"tcp://127.0.0.1:{port}")
        return socket

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _start(self) -> tuple[PeerNetwork, PeerNetwork]:
        a = PeerNetwork(NodeIdentity.generate("a"), listen_host="127.0.0.1", failure_timeout_s=30.0)
        await a.start()

        async def echo(sender: NodeId, header: Any, payload: bytes) -> tuple[dict[str, Any], bytes]:
            return {"from": sender}, payload

        a.register_handler("echo", echo)
        a.register_lane_handler("echo", lambda sender, header, payload: payload)
        b = PeerNetwork(
            NodeIdentity.generate("b"),
            listen_host="127.0.0.1",
            bootstrap=[("127.0.0.1", a.peer_port)],
            failure_timeout_s=30.0,
        )
        await b.start()
        for _ in range(250):
            if "a" in b.records() and "b" in a.records():
                break
            await asyncio.sleep(0.02)
        return a, b

    def assert_serving(self) -> None:
        header, payload = self.run(self.b.request(NodeId("a"), "echo", {}, b"ok", timeout=3.0))
        assert (header, payload) == ({"from": "b"}, b"ok")
        assert self.a.loop_restarts == 0, "a receive loop died and had to be restarted"

    def close(self) -> None:
        self.intruder.close(linger=0)
        self.lane_intruder.close(linger=0)
        self.context.term()
        self.run(self.b.stop(announce=False))
        self.run(self.a.stop(announce=False))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    running = Cluster()
    try:
        yield running
    finally:
        running.close()


def _valid_hello() -> bytes:
    return json.dumps(HandshakeSide(NodeIdentity.generate("fuzz")).greeting.to_wire()).encode()


@FUZZ
@given(frames=st.lists(st.binary(max_size=300), min_size=1, max_size=4))
def test_random_frames_on_the_peer_and_lane_ports(cluster: Cluster, frames: list[bytes]) -> None:
    cluster.intruder.send_multipart(frames)
    cluster.lane_intruder.send_multipart(frames)
    cluster.assert_serving()


@FUZZ
@given(
    frame_type=frame_types,
    sealed=st.booleans(),
    body=st.one_of(
        json_values.map(lambda value: json.dumps(value).encode()),
        byte_flips.map(lambda flips: mutate(_valid_hello(), flips)),
        st.integers(1, 5000).map(lambda depth: b"[" * depth + b"]" * depth),
    ),
)
def test_mutated_handshake_frames(cluster: Cluster, frame_type: Any, sealed: bool, body: bytes) -> None:
    cluster.intruder.send_multipart([encode_handshake_envelope(frame_type, sealed), body])
    cluster.assert_serving()


def _valid_gossip_entries() -> list[dict[str, Any]]:
    identity = NodeIdentity.generate("gossiped")
    record = NodeRecord(
        identity.node_id, identity.public_key, "127.0.0.1", 9, (HostedSegment("m", 0, 4, True),), ("m",), 0, 1
    )
    return [sign_record(identity, record).to_wire()]


@FUZZ
@given(
    payload=st.one_of(
        json_values.map(lambda value: json.dumps(value).encode()),
        byte_flips.map(lambda flips: mutate(json.dumps(_valid_gossip_entries()).encode(), flips)),
        st.tuples(
            st.sampled_from(["address", "port", "node_id", "segments", "version", "load"]), json_values
        ).map(
            lambda change: json.dumps(
                [
                    {**entry, "record": {**entry["record"], change[0]: change[1]}}
                    for entry in _valid_gossip_entries()
                ]
            ).encode()
        ),
    ),
    kind=st.sampled_from(["lp.gossip", "lp.ping", "echo", "no-such-kind"]),
    inner=st.binary(max_size=64),
)
def test_sealed_gossip_and_inner_headers_from_a_member(
    cluster: Cluster, payload: bytes, kind: str, inner: bytes
) -> None:
    connection = cluster.b._peer_connections[NodeId("a")]
    session = connection.session
    assert session is not None

    async def send() -> None:
        # A valid inner header with the fuzzed payload, then fuzzed inner-header bytes.
        await session.send(kind, "oneway", 0, b"", payload)
        first, sealed = session._sending.seal(data_associated_bytes("b", kind), inner, payload)
        await connection.socket.send_multipart([encode_data_envelope(first, kind), *sealed])

    cluster.run(send())
    cluster.assert_serving()


@settings(max_examples=300, deadline=None, database=None)
@given(data=st.binary(max_size=200))
def test_decoders_raise_only_their_documented_errors(data: bytes) -> None:
    decoders = [
        decode_envelope,
        decode_inner_header,
        lambda raw: loads_bounded(raw, 1 << 16),
        RequestPrefix.decode,
        ReplyPrefix.decode,
    ]
    for decode in decoders:
        with contextlib.suppress(MalformedFrame):  # the one error a decoder may raise for garbage
            decode(data)
    for parse in (
        SignedRecord.from_wire,
        lambda value: Greeting.from_wire(value if isinstance(value, dict) else {}),
    ):
        with contextlib.suppress(MalformedFrame, ValueError):  # garbage, or a value of the wrong shape
            parse(loads_bounded(data, 1 << 16))
