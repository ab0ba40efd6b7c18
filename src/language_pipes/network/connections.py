"""The node's sockets: one ROUTER for what peers send us, one DEALER per peer we send to.

Holds the per-connection state, the socket options every socket gets (message
size cap, linger) and :class:`ConnectionsMixin`, which opens and closes
outbound connections within the limits of :mod:`language_pipes.network.limits`.
The receive loops that read these sockets live in
:mod:`language_pipes.network.receive`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import zmq
import zmq.asyncio

from language_pipes.network.handshake import Greeting, HandshakeSide
from language_pipes.network.limits import MAX_OUTBOUND_CONNECTIONS
from language_pipes.network.session import Session
from language_pipes.network.types import NodeId
from language_pipes.network.wire import Role

if TYPE_CHECKING:
    from language_pipes.network.peer_network import PeerNetwork

Header = dict[str, Any] | bytes
Reply = tuple[Header, bytes | memoryview]
Handler = Callable[[NodeId, Header, bytes], Awaitable[Reply | None]]
PeerObserver = Callable[[NodeId], None]
RecordsObserver = Callable[[], None]

KIND_PING = "lp.ping"
KIND_GOSSIP = "lp.gossip"
KIND_LEAVE = "lp.leave"
_INTERNAL_CORRELATION_ID = 0


def configure_socket(socket: zmq.Socket[Any], max_message_bytes: int) -> None:
    """Options every network socket gets: no lingering on close, and the frame size cap.

    ZeroMQ disconnects a peer whose frame is larger than ``MAXMSGSIZE`` before
    buffering it, so an oversized frame costs the sender its connection, not us memory.
    """
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)


@dataclass
class OutboundConnection:
    """Our DEALER socket to one address, and the session once the handshake is done."""

    address: str
    port: int
    expected_id: NodeId | None
    socket: zmq.asyncio.Socket
    session: Session | None = None
    task: asyncio.Task[None] | None = None

    @property
    def label(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass
class InboundState:
    """What we know about one connection to our ROUTER socket."""

    address: str
    handshake: tuple[HandshakeSide, Greeting, bytes] | None = None
    session: Session | None = None


@dataclass
class RetrySchedule:
    """When to try an address again after failures (1, 2, 4, 8 s; reset on success)."""

    failures: int = 0
    next_attempt: float = 0.0
    resolved_id: NodeId | None = None

    def failed(self, now: float) -> None:
        self.failures += 1
        self.next_attempt = now + min(8.0, 0.5 * 2**self.failures)


@dataclass
class LocalState:
    """What this node announces about itself, and who wants to hear about changes."""

    segments: tuple[Any, ...] = ()
    end_models: tuple[str, ...] = ()
    load: int = 0
    observers_joined: list[PeerObserver] = field(default_factory=list)
    observers_lost: list[PeerObserver] = field(default_factory=list)
    observers_records: list[RecordsObserver] = field(default_factory=list)


def send_if_possible(connection: OutboundConnection, kind: str, role: Role, payload: bytes) -> bool:
    """Queue a network-internal message without waiting; False if ZeroMQ cannot take it now."""
    if connection.session is None:
        return False
    frames = connection.session.seal(kind, role, _INTERNAL_CORRELATION_ID, b"", payload)
    future = connection.socket.send_multipart(frames, flags=zmq.DONTWAIT)
    if not future.done():
        future.add_done_callback(_ignore_send_outcome)
        return True
    return future.exception() is None


def _ignore_send_outcome(future: asyncio.Future[Any]) -> None:
    # Retrieve (and so silence) the error of a best-effort send; failure detection covers the loss.
    if not future.cancelled():
        future.exception()


class ConnectionsMixin:
    """Opening, closing and failing outbound connections (a part of PeerNetwork)."""

    def _open_connection(self: PeerNetwork, address: str, port: int, expected_id: NodeId | None) -> bool:
        """Dial ``address:port``; False when the connection table is full or the address is refused."""
        assert self._context is not None
        if len(self._outbound) >= MAX_OUTBOUND_CONNECTIONS:
            self._guard.log.warning(
                "outbound-full", "not dialling %s:%d: too many connections", address, port
            )
            return False
        socket = self._context.socket(zmq.DEALER)
        configure_socket(socket, self._max_message_bytes)
        socket.setsockopt(zmq.IMMEDIATE, 1)
        socket.setsockopt(zmq.RECONNECT_IVL, 100)
        socket.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        socket.setsockopt(zmq.SNDTIMEO, int(self.failure_timeout_s * 1000))
        try:
            socket.connect(f"tcp://{address}:{port}")
        except zmq.ZMQError as error:
            # An address ZeroMQ cannot use (records are validated, but DNS names may still fail here).
            socket.close(linger=0)
            self._guard.log.warning("connect-failed", "cannot dial %s:%d: %s", address, port, error)
            return False
        connection = OutboundConnection(address, port, expected_id, socket)
        self._outbound[(address, port)] = connection
        connection.task = self._spawn(self._supervised_connection(connection))
        return True

    def _close_connection(self: PeerNetwork, connection: OutboundConnection) -> None:
        if self._outbound.get((connection.address, connection.port)) is connection:
            del self._outbound[(connection.address, connection.port)]
        if (
            connection.session is not None
            and self._peer_connections.get(connection.session.peer_id) is connection
        ):
            del self._peer_connections[connection.session.peer_id]
        if connection.task is not None and connection.task is not asyncio.current_task():
            connection.task.cancel()
        connection.socket.close(linger=0)

    def _connection_failed(self: PeerNetwork, connection: OutboundConnection) -> None:
        now = time.monotonic()
        schedule = self._bootstrap.get((connection.address, connection.port))
        if schedule is None and connection.expected_id is not None:
            schedule = self._record_retries.setdefault(connection.expected_id, RetrySchedule())
        if schedule is not None:
            schedule.failed(now)
        self._close_connection(connection)

    def _on_connection_ready(self: PeerNetwork, connection: OutboundConnection, session: Session) -> None:
        peer = session.peer_id
        connection.session = session
        self._peer_connections[peer] = connection
        for schedule in (
            self._bootstrap.get((connection.address, connection.port)),
            self._record_retries.get(peer),
        ):
            if schedule is not None:
                schedule.failures = 0
        self._membership.forget_departure(peer)
        self._membership.mark_connected(peer, time.monotonic())
        self._log.info("connected to node %r at %s", peer, connection.label)
        self._push_gossip(connection)
        if self._membership.is_live(peer):
            self._maybe_joined(peer, already_live=False)
            self._notify_records_changed()
