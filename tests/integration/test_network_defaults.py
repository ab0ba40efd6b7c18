"""Secure defaults of a PeerNetwork: where it listens, what it says without a key, its pinned keys."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import zmq

from language_pipes.network.identity import NodeIdentity
from language_pipes.network.limits import DEFAULT_MAX_MESSAGE_BYTES
from language_pipes.network.peer_network import PeerNetwork
from language_pipes.network.types import NodeId
from support.peers import Starter, wait_until

pytestmark = pytest.mark.asyncio


async def test_peer_and_lane_ports_listen_on_the_advertised_address_only() -> None:
    network = PeerNetwork(NodeIdentity.generate("a"), advertise_ip="127.0.0.1")
    await network.start()
    try:
        assert network._router is not None and network._lane_server is not None
        assert network._router.getsockopt(zmq.LAST_ENDPOINT).decode().startswith("tcp://127.0.0.1:")
        lane_endpoint = network._lane_server._socket.getsockopt(zmq.LAST_ENDPOINT).decode()
        assert lane_endpoint.startswith("tcp://127.0.0.1:")
    finally:
        await network.stop(announce=False)


async def test_every_socket_caps_the_message_size(start_node: Starter) -> None:
    a = await start_node("a")
    b = await start_node("b", bootstrap=(a,))
    await wait_until(lambda: "a" in b.records())
    assert a._router is not None and a._lane_server is not None
    sockets = [a._router, a._lane_server._socket, *(c.socket for c in b._outbound.values())]
    assert all(socket.getsockopt(zmq.MAXMSGSIZE) == DEFAULT_MAX_MESSAGE_BYTES for socket in sockets)


async def test_a_node_without_a_network_key_warns_loudly(
    start_node: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    open_node = await start_node("open")
    assert not open_node.has_network_key
    assert any("NO network_key IS SET" in record.getMessage() for record in caplog.records)
    caplog.clear()
    await start_node("keyed", network_key=b"k" * 16)
    assert not any("network_key" in record.getMessage() for record in caplog.records)


async def test_pins_survive_a_restart_and_a_deleted_line_trusts_a_re_keyed_node(
    start_node: Starter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    pins = tmp_path / "known_nodes" / "a.txt"
    a_identity = NodeIdentity.generate("a")
    a = await start_node("a", identity=a_identity, pins_file=pins)
    b = await start_node("b", bootstrap=(a,))
    await wait_until(lambda: "b" in a.records(), what="b joining")
    assert '"b"' in pins.read_text()
    await a.stop(announce=False)
    await b.stop(announce=False)
    # a restarts and b comes back with new credentials: a still holds the old pin and refuses it.
    a = await start_node("a", identity=a_identity, pins_file=pins)
    rekeyed = await start_node("b", bootstrap=(a,))
    await wait_until(lambda: "identity key differs" in caplog.text, what="the re-keyed node refused")
    assert "b" not in a.records()
    # The documented way to trust the new key: delete b's line from the pins file.
    pins.write_text("".join(line + "\n" for line in pins.read_text().splitlines() if '"b"' not in line))
    await wait_until(lambda: "b" in a.records() and "a" in rekeyed.records(), timeout=8.0, what="re-keyed b")
    assert a.records()[NodeId("b")].public_key == rekeyed._identity.public_key


async def test_a_key_in_the_whitelist_refuses_an_impostor_that_comes_first(
    start_node: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    genuine = NodeIdentity.generate("b")
    a = await start_node("a", whitelist={"a", f"b@{genuine.public_key.hex()}"})
    impostor = await start_node("b", bootstrap=(a,))  # first, with a key of its own
    await wait_until(lambda: "identity key differs" in caplog.text, what="the impostor refused")
    await impostor.stop(announce=False)
    b = await start_node("b", identity=genuine, bootstrap=(a,))
    await wait_until(lambda: "b" in a.records() and "a" in b.records(), what="the genuine b joining")
