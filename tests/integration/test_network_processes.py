"""Peer networks in separate processes: crash detection, restart, impersonation, hostile peers.

Run as a script, this file is the child node: ``python test_network_processes.py
NODE_ID BOOTSTRAP_PORT`` joins through 127.0.0.1:BOOTSTRAP_PORT with the identity
stored under ``$LP_APP_DIR`` and prints ``READY <port>``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import zmq
import zmq.asyncio

from language_pipes.network.handshake import Greeting, HandshakeSide
from language_pipes.network.identity import NodeIdentity, load_or_create_identity
from language_pipes.network.membership import sign_record
from language_pipes.network.peer_network import PeerNetwork
from language_pipes.network.types import NodeId, NodeRecord
from language_pipes.network.wire import encode_handshake_envelope
from support.peers import wait_until

TESTS_DIR = Path(__file__).resolve().parents[1]  # so the child, run as a script, imports support too

pytestmark = pytest.mark.slow


async def _run_child(node_id: str, bootstrap_port: int) -> None:
    network = PeerNetwork(
        load_or_create_identity(node_id),
        listen_host="127.0.0.1",
        advertise_ip="127.0.0.1",
        bootstrap=[("127.0.0.1", bootstrap_port)],
    )

    async def echo(sender: NodeId, header: Any, payload: bytes) -> tuple[dict[str, Any], bytes]:
        return {"sha256": hashlib.sha256(payload).hexdigest()}, payload

    async def view(sender: NodeId, header: Any, payload: bytes) -> tuple[dict[str, Any], bytes]:
        return {"records": sorted(network.records())}, b""

    network.register_handler("echo", echo)
    network.register_handler("view", view)
    await network.start()
    print(f"READY {network.peer_port}", flush=True)
    await asyncio.Event().wait()


class ChildNodes:
    """Starts child node processes and kills whatever is left at the end."""

    def __init__(self) -> None:
        self.processes: list[asyncio.subprocess.Process] = []

    async def start(self, node_id: str, bootstrap_port: int, app_dir: Path) -> asyncio.subprocess.Process:
        search_path = os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")]))
        environment = {**os.environ, "LP_APP_DIR": str(app_dir), "PYTHONPATH": search_path}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            node_id,
            str(bootstrap_port),
            env=environment,
            stdout=asyncio.subprocess.PIPE,
        )
        self.processes.append(process)
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 20.0)
        assert line.startswith(b"READY"), line
        return process

    async def close(self) -> None:
        for process in self.processes:
            if process.returncode is None:
                process.kill()
                await process.wait()


@pytest_asyncio.fixture
async def children() -> AsyncIterator[ChildNodes]:
    nodes = ChildNodes()
    yield nodes
    await nodes.close()


@pytest_asyncio.fixture
async def hub() -> AsyncIterator[PeerNetwork]:
    network = PeerNetwork(NodeIdentity.generate("hub"), listen_host="127.0.0.1", advertise_ip="127.0.0.1")
    await network.start()
    yield network
    await network.stop()


async def _view_of(hub: PeerNetwork, node_id: str) -> list[str]:
    header, _ = await hub.request(NodeId(node_id), "view", {}, timeout=2.0)
    assert isinstance(header, dict)
    return list(header["records"])


@pytest.mark.asyncio
async def test_a_killed_process_is_dropped_everywhere_and_its_restart_rejoins(
    hub: PeerNetwork, children: ChildNodes, tmp_path: Path
) -> None:
    b = await children.start("b", hub.peer_port, tmp_path / "b")
    await children.start("c", hub.peer_port, tmp_path / "c")
    await wait_until(lambda: set(hub.records()) == {"hub", "b", "c"}, 10.0, "b and c joining")
    await wait_until(lambda: hub.is_live(NodeId("c")), 5.0, "c live")
    deadline = time.monotonic() + 5.0
    while await _view_of(hub, "c") != ["b", "c", "hub"]:  # c finds b through the hub's gossip
        assert time.monotonic() < deadline, "c never learned of b"
        await asyncio.sleep(0.1)

    payload = os.urandom(1 << 20)
    header, echoed = await hub.request(NodeId("b"), "echo", {}, payload, timeout=5.0)
    assert header == {"sha256": hashlib.sha256(payload).hexdigest()} and echoed == payload
    b_key = hub.records()[NodeId("b")].public_key

    lost: list[NodeId] = []
    hub.on_peer_lost(lost.append)
    b.send_signal(signal.SIGKILL)
    await b.wait()
    elapsed = await wait_until(lambda: "b" not in hub.records(), 6.0, "b dropped by the hub")
    assert elapsed <= 5.0
    assert lost == ["b"]
    deadline = time.monotonic() + 3.0
    while "b" in await _view_of(hub, "c"):
        assert time.monotonic() < deadline, "c still lists the killed node"
        await asyncio.sleep(0.1)

    await children.start("b", hub.peer_port, tmp_path / "b")  # same credentials folder: same key
    await wait_until(lambda: "b" in hub.records(), 10.0, "b rejoining")
    assert hub.records()[NodeId("b")].public_key == b_key
    deadline = time.monotonic() + 5.0
    while "b" not in await _view_of(hub, "c"):
        assert time.monotonic() < deadline, "c did not see b come back"
        await asyncio.sleep(0.1)


@pytest.mark.asyncio
async def test_a_process_claiming_a_known_id_with_another_key_is_rejected(
    hub: PeerNetwork, children: ChildNodes, tmp_path: Path
) -> None:
    await children.start("b", hub.peer_port, tmp_path / "genuine")
    await wait_until(lambda: "b" in hub.records(), 10.0, "b joining")
    genuine_key = hub.records()[NodeId("b")].public_key
    await children.start("b", hub.peer_port, tmp_path / "impostor")  # other folder: other key
    await asyncio.sleep(2.0)
    assert hub.records()[NodeId("b")].public_key == genuine_key
    header, _ = await hub.request(NodeId("b"), "echo", {}, b"still the genuine one", timeout=2.0)
    assert header == {"sha256": hashlib.sha256(b"still the genuine one").hexdigest()}


@pytest.mark.asyncio
async def test_a_node_process_survives_hostile_peers_and_still_takes_new_nodes(
    hub: PeerNetwork, children: ChildNodes, tmp_path: Path
) -> None:
    await children.start("victim", hub.peer_port, tmp_path / "victim")
    await wait_until(lambda: hub.is_live(NodeId("victim")), 10.0, "the victim joining")
    port = hub.records()[NodeId("victim")].port
    context = zmq.asyncio.Context()
    try:
        await _attack_without_a_session(context, port)
    finally:
        context.destroy(linger=0)
    # A member floods gossip: records that are not hosts, and more records than sockets.
    flood = [_signed_record(f"flood-{index}", "127.0.0.1", 1000 + index) for index in range(1100)]
    session = hub._peer_connections[NodeId("victim")].session
    assert session is not None
    for entries in ([_signed_record("bad-host", "x y", 9)], flood, flood[:400]):
        await session.send("lp.gossip", "oneway", 0, b"", json.dumps(entries).encode())
    await asyncio.sleep(1.0)
    header, _ = await hub.request(NodeId("victim"), "echo", {}, b"still here", timeout=3.0)
    assert header == {"sha256": hashlib.sha256(b"still here").hexdigest()}
    # The id squatted above joins for real, through the victim.
    await children.start("newcomer", port, tmp_path / "newcomer")
    deadline = time.monotonic() + 10.0
    while "newcomer" not in await _view_of(hub, "victim"):
        assert time.monotonic() < deadline, "the victim did not take the new node"
        await asyncio.sleep(0.2)


async def _attack_without_a_session(context: zmq.asyncio.Context, port: int) -> None:
    """Garbage, a deeply nested hello, mutated hellos and a squatted id, from a socket with no session."""
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(f"tcp://127.0.0.1:{port}")
    hello = encode_handshake_envelope("hello", sealed=False)
    valid_body = json.dumps(HandshakeSide(NodeIdentity.generate("mutant")).greeting.to_wire()).encode()
    squatted = Greeting(NodeId("newcomer"), os.urandom(32), os.urandom(32), os.urandom(32))
    frames: list[list[bytes]] = [[os.urandom(64)], [os.urandom(8), os.urandom(900)], [hello, b"[" * 100_000]]
    for index in range(50):
        mutated = bytearray(valid_body)
        mutated[(index * 37) % len(mutated)] = index
        frames.append([hello, bytes(mutated)])
    frames.append([hello, json.dumps(squatted.to_wire()).encode()])
    for message in frames:
        await socket.send_multipart(message)
    await asyncio.sleep(0.5)
    socket.close(linger=0)


def _signed_record(node_id: str, address: str, port: int) -> dict[str, Any]:
    identity = NodeIdentity.generate(node_id)
    record = NodeRecord(identity.node_id, identity.public_key, address, port, (), (), 0, 1)
    return sign_record(identity, record).to_wire()


if __name__ == "__main__":
    asyncio.run(_run_child(sys.argv[1], int(sys.argv[2])))
