"""Where bytes leave the node: the peer-to-peer network of one node over ZeroMQ.

Each node binds one ROUTER socket on ``peer_port`` for everything peers send
it, and keeps one DEALER socket per peer for what it sends them (persistent
connections; ZeroMQ frames messages and reconnects). Every connection starts
with a mutual handshake (:mod:`language_pipes.network.handshake`), then carries
sealed messages (:mod:`language_pipes.network.session`):

* ``send``: one-way message, delivered in order, handler awaited inline;
* ``request``: the handler's reply comes back on the same connection;
* network-internal kinds (``lp.ping``, ``lp.gossip``, ``lp.leave``) keep the
  membership (:mod:`language_pipes.network.membership`) current.

All of it runs on the caller's asyncio loop; ZeroMQ's own I/O thread is the
only other thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.asyncio

from language_pipes.network.crypto import FrameRejected, handshake_cipher, open_handshake, seal_handshake
from language_pipes.network.handshake import (
    Greeting,
    HandshakeFailed,
    HandshakeSide,
    check_client_signature,
    check_server_signature,
    sign_as_client,
    sign_as_server,
    transcript,
)
from language_pipes.network.identity import NodeIdentity
from language_pipes.network.lanes import LaneClients, LaneHandler, LaneRefused, LaneServer
from language_pipes.network.membership import Membership, PinnedKeys, SignedRecord, sign_record
from language_pipes.network.session import Session
from language_pipes.network.types import (
    RESERVED_KIND_PREFIX,
    HostedSegment,
    NetworkError,
    NodeId,
    NodeRecord,
    NotWhitelistedError,
    PeerLostError,
    PeerRequestFailed,
    PeerRequestTimeout,
    PeerUnavailableError,
)
from language_pipes.network.wire import (
    Envelope,
    FrameType,
    MalformedFrame,
    Role,
    decode_envelope,
    decode_json_body,
    encode_handshake_envelope,
    encode_json_body,
)

logger = logging.getLogger(__name__)

Header = dict[str, Any] | bytes
Reply = tuple[Header, bytes | memoryview]
Handler = Callable[[NodeId, Header, bytes], Awaitable[Reply | None]]
PeerObserver = Callable[[NodeId], None]
RecordsObserver = Callable[[], None]

KIND_PING = "lp.ping"
KIND_GOSSIP = "lp.gossip"
KIND_LEAVE = "lp.leave"
REFUSAL_KEY_MISMATCH = "network key mismatch"
_HEARTBEAT_CORRELATION_ID = 0
_MAX_PENDING_HANDSHAKES = 256


class HandshakeRefused(Exception):
    """The other side answered our handshake with an explicit refusal."""


class _KeyMismatch(Exception):
    """A handshake frame sealed with another network key (or sealed/unsealed when it should not be)."""


@dataclass
class _OutboundConnection:
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
class _InboundState:
    """What we know about one connection to our ROUTER socket."""

    address: str
    handshake: tuple[HandshakeSide, Greeting, bytes] | None = None
    session: Session | None = None


@dataclass
class _RetrySchedule:
    """When to try an address again after failures (1, 2, 4, 8 s; reset on success)."""

    failures: int = 0
    next_attempt: float = 0.0
    resolved_id: NodeId | None = None

    def failed(self, now: float) -> None:
        self.failures += 1
        self.next_attempt = now + min(8.0, 0.5 * 2**self.failures)


@dataclass
class _LocalState:
    segments: tuple[HostedSegment, ...] = ()
    end_models: tuple[str, ...] = ()
    load: int = 0
    observers_joined: list[PeerObserver] = field(default_factory=list)
    observers_lost: list[PeerObserver] = field(default_factory=list)
    observers_records: list[RecordsObserver] = field(default_factory=list)


class PeerNetwork:
    """One node's membership in the peer-to-peer network.

    ``failure_timeout_s`` bounds how long a silent peer stays listed: it is
    dropped (and ``on_peer_lost`` fires) at most that long after it was last
    heard. Heartbeats go every ``heartbeat_interval_s`` (default: an eighth of
    the timeout, between 0.1 and 1 s).
    """

    def __init__(
        self,
        identity: NodeIdentity,
        *,
        listen_host: str = "0.0.0.0",
        peer_port: int = 0,
        advertise_ip: str = "127.0.0.1",
        network_key: bytes | None = None,
        whitelist: Iterable[str] = (),
        bootstrap: Iterable[tuple[str, int]] = (),
        failure_timeout_s: float = 4.0,
        heartbeat_interval_s: float | None = None,
        handshake_timeout_s: float = 2.0,
        lane_port: int | None = 0,
    ) -> None:
        self.node_id = identity.node_id
        self._identity = identity
        self._listen_host = listen_host
        self.peer_port = peer_port
        self._advertise_ip = advertise_ip
        self._network_key = network_key
        self._handshake_cipher = handshake_cipher(network_key)
        self._bootstrap = {(address, port): _RetrySchedule() for address, port in bootstrap}
        self.failure_timeout_s = failure_timeout_s
        self._heartbeat_interval_s = heartbeat_interval_s or min(1.0, max(0.1, failure_timeout_s / 8))
        self._handshake_timeout_s = handshake_timeout_s
        self._membership = Membership(
            identity, whitelist, PinnedKeys(), departed_memory_s=2 * failure_timeout_s
        )
        self._local = _LocalState()
        self._own_record: SignedRecord | None = None
        self._handlers: dict[str, Handler] = {}
        self._context: zmq.asyncio.Context | None = None
        self._router: zmq.asyncio.Socket | None = None
        self._inbound: dict[bytes, _InboundState] = {}
        self._outbound: dict[tuple[str, int], _OutboundConnection] = {}
        self._peer_connections: dict[NodeId, _OutboundConnection] = {}
        self._record_retries: dict[NodeId, _RetrySchedule] = {}
        self._pending: dict[int, tuple[NodeId, asyncio.Future[Reply]]] = {}
        self._correlation_ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._gossip_now = asyncio.Event()
        self._running = False
        # Step lanes (lanes.py): 0 binds a free port, None runs without (steps use the peer port).
        self._lane_port = lane_port
        self._lane_context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._lane_server: LaneServer | None = None
        self._lane_clients: LaneClients | None = None
        self._lane_handlers: dict[str, LaneHandler] = {}

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind the peer port, sign our record and start joining through the bootstrap nodes."""
        self._context = zmq.asyncio.Context()
        self._router = self._context.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if self.peer_port == 0:
            self.peer_port = self._router.bind_to_random_port(f"tcp://{self._listen_host}")
        else:
            self._router.bind(f"tcp://{self._listen_host}:{self.peer_port}")
        if self._lane_port is not None:
            self._start_lanes(self._lane_port)
        self._sign_own_record()
        self._running = True
        self._spawn(self._read_router())
        self._spawn(self._maintain())
        logger.info("node %s listening for peers on %s:%d", self.node_id, self._listen_host, self.peer_port)

    async def stop(self, announce: bool = True) -> None:
        """Leave the network (telling peers, unless ``announce`` is False) and close every socket."""
        if not self._running:
            return
        if announce:
            await self.leave()
        self._running = False
        for task in list(self._tasks):
            task.cancel()
        for connection in list(self._outbound.values()):
            self._close_connection(connection)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for _, future in self._pending.values():
            if not future.done():
                future.set_exception(NetworkError("the network was stopped"))
        self._pending.clear()
        if self._router is not None:
            self._router.close(linger=0)
        if self._context is not None:
            self._context.destroy(linger=0)
        if self._lane_server is not None:
            await asyncio.to_thread(self._lane_server.stop)
        if self._lane_context is not None:
            self._lane_context.destroy(linger=0)

    async def leave(self) -> None:
        """Tell every connected peer we are going, so they drop us at once instead of after a timeout."""
        for connection in list(self._peer_connections.values()):
            if connection.session is not None:
                # Best effort: a peer we cannot reach now will time us out anyway.
                _send_if_possible(connection, KIND_LEAVE, "oneway", b"")
        await asyncio.sleep(0.05)  # let ZeroMQ's I/O thread flush before sockets close

    # ----------------------------------------------------------------- public API

    def register_handler(self, kind: str, handler: Handler) -> None:
        """Call ``handler(sender_id, header, payload)`` for messages of ``kind``.

        One-way messages are handled in arrival order, each handler awaited on
        the receive loop before the next inbound message is read: keep it quick
        (hand heavy work to a queue). Requests run concurrently; the handler's
        return value (``(header, payload)`` or None) is the reply.
        """
        if kind.startswith(RESERVED_KIND_PREFIX):
            raise ValueError(f"message kinds starting with {RESERVED_KIND_PREFIX!r} are reserved")
        self._handlers[kind] = handler

    def on_peer_joined(self, observer: PeerObserver) -> None:
        self._local.observers_joined.append(observer)

    def on_peer_lost(self, observer: PeerObserver) -> None:
        self._local.observers_lost.append(observer)

    def on_records_changed(self, observer: RecordsObserver) -> None:
        self._local.observers_records.append(observer)

    def set_local_record(
        self,
        *,
        segments: Iterable[HostedSegment] | None = None,
        end_models: Iterable[str] | None = None,
        load: int | None = None,
    ) -> None:
        """Change what we tell the network about ourselves; gossiped right away."""
        if segments is not None:
            self._local.segments = tuple(segments)
        if end_models is not None:
            self._local.end_models = tuple(end_models)
        if load is not None:
            self._local.load = load
        if self._own_record is not None:
            self._sign_own_record()
            self._gossip_now.set()
            self._notify_records_changed()

    def records(self) -> dict[NodeId, NodeRecord]:
        """This node's record and those of every live, verified peer."""
        live = {node_id: signed.record for node_id, signed in self._membership.live_records().items()}
        if self._own_record is not None:
            live[self.node_id] = self._own_record.record
        return live

    def is_live(self, node_id: NodeId) -> bool:
        return self._membership.is_live(node_id)

    async def send(
        self, node_id: NodeId, kind: str, header: Header, payload: bytes | memoryview = b""
    ) -> None:
        """Deliver one message to ``node_id``; raises PeerUnavailableError if it is not a live peer."""
        session = self._session_to(node_id)
        try:
            await session.send(kind, "oneway", 0, header, payload)
        except zmq.Again as error:
            # SNDTIMEO passed: ZeroMQ could not hand the message to the peer's connection.
            raise PeerUnavailableError(f"node {node_id!r} is not accepting messages") from error

    async def request(
        self,
        node_id: NodeId,
        kind: str,
        header: Header,
        payload: bytes | memoryview = b"",
        timeout: float = 10.0,
    ) -> tuple[Header, bytes]:
        """Send a message and wait for the handler's reply on the other node."""
        session = self._session_to(node_id)
        correlation_id = next(self._correlation_ids)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = (node_id, future)
        try:
            await session.send(kind, "request", correlation_id, header, payload)
            reply_header, reply_payload = await asyncio.wait_for(future, timeout)
        except zmq.Again as error:
            # SNDTIMEO passed: the message never left this node.
            raise PeerUnavailableError(f"node {node_id!r} is not accepting messages") from error
        except TimeoutError as error:
            # wait_for's timeout: turn it into an error that names the peer and the kind.
            raise PeerRequestTimeout(
                f"no reply from node {node_id!r} to {kind!r} within {timeout:g} s"
            ) from error
        finally:
            self._pending.pop(correlation_id, None)
        return reply_header, bytes(reply_payload)

    # ----------------------------------------------------------------- step lanes

    def register_lane_handler(self, kind: str, handler: LaneHandler) -> None:
        """Answer lane requests of ``kind`` with ``handler(sender, header, payload) -> reply payload``.

        Handlers run one at a time on the lane thread, not on the event loop.
        """
        self._lane_handlers[kind] = handler
        if self._lane_server is not None:
            self._lane_server.register(kind, handler)

    def lane_request(
        self, node_id: NodeId, kind: str, header: bytes, payload: bytes | memoryview, timeout: float
    ) -> bytes | None:
        """Send a request over this thread's lane to ``node_id`` and block until the reply payload.

        Call it from a thread other than the event loop. Returns None when the
        peer offers no usable lane: send the message with :meth:`request` then.
        Raises like :meth:`request` otherwise.
        """
        if self._lane_clients is None:
            return None
        session = self._session_to(node_id)
        signed = self._membership.record_of(node_id)
        if signed is None or signed.record.lane_port is None:
            return None
        client = self._lane_clients.for_peer(session, signed.record.address, signed.record.lane_port)
        if client is None:
            return None
        try:
            return client.request(kind, header, payload, timeout, lambda: self._lane_peer_problem(node_id))
        except LaneRefused as error:
            logger.info("%s; sending over the peer network", error)
            self._lane_clients.discard(node_id)
            return None
        except PeerLostError:
            self._lane_clients.discard(node_id)
            raise

    def _start_lanes(self, port: int) -> None:
        self._lane_context = zmq.Context()
        self._lane_server = LaneServer(self._lane_context, self._listen_host, port, self._inbound_session)
        for kind, handler in self._lane_handlers.items():
            self._lane_server.register(kind, handler)
        self._lane_server.start()
        self._lane_clients = LaneClients(self._lane_context)
        logger.info("step lanes on %s:%d", self._listen_host, self._lane_server.port)

    def _inbound_session(self, lane_tag: bytes) -> Session | None:
        """The open inbound session named by ``lane_tag`` (read from the lane thread)."""
        for state in list(self._inbound.values()):
            session = state.session
            if session is not None and session.lane_tag == lane_tag:
                return session if self._membership.allows(session.peer_id) else None
        return None

    def _lane_peer_problem(self, node_id: NodeId) -> str | None:
        if not self._running:
            return "the network was stopped"
        return None if self._membership.is_live(node_id) else "it stopped answering"

    # ----------------------------------------------------------------- own record & observers

    def _sign_own_record(self) -> None:
        previous = self._own_record.record.version if self._own_record is not None else 0
        record = NodeRecord(
            node_id=self.node_id,
            public_key=self._identity.public_key,
            address=self._advertise_ip,
            port=self.peer_port,
            segments=self._local.segments,
            end_models=self._local.end_models,
            load=self._local.load,
            version=max(previous + 1, time.time_ns()),
            lane_port=self._lane_server.port if self._lane_server is not None else None,
        )
        self._own_record = sign_record(self._identity, record)

    def _notify(self, observers: Iterable[Callable[..., None]], *arguments: Any) -> None:
        for observer in observers:
            try:
                observer(*arguments)
            except Exception:
                # An observer's bug must not break the network loop; it is logged with its traceback.
                logger.exception("network observer %r failed", observer)

    def _notify_records_changed(self) -> None:
        self._notify(self._local.observers_records)

    # ----------------------------------------------------------------- helpers

    def _spawn(self, coroutine: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _session_to(self, node_id: NodeId) -> Session:
        if not self._membership.allows(node_id):
            raise NotWhitelistedError(f"node {node_id!r} is not in whitelist_node_ids")
        connection = self._peer_connections.get(node_id)
        if connection is None or connection.session is None or not self._membership.is_connected(node_id):
            raise PeerUnavailableError(f"node {node_id!r} is not a live peer")
        return connection.session

    def _handshake_frames(self, frame_type: FrameType, fields: dict[str, Any]) -> list[bytes]:
        body = encode_json_body(fields)
        if self._handshake_cipher is None:
            return [encode_handshake_envelope(frame_type, sealed=False), body]
        envelope = encode_handshake_envelope(frame_type, sealed=True)
        return [envelope, seal_handshake(self._handshake_cipher, body, envelope)]

    def _open_handshake_body(
        self, envelope: Envelope, body: bytes | memoryview, origin: str
    ) -> dict[str, Any]:
        """Decrypt and parse a handshake body, logging (and raising _KeyMismatch) if keys differ."""
        prefix = f"rejected frame from {origin}: authentication failed (wrong network key?)"
        if self._handshake_cipher is None:
            if envelope.sealed:
                logger.warning("%s: the peer uses a network key and this node has none", prefix)
                raise _KeyMismatch
            return decode_json_body(body)
        if not envelope.sealed:
            logger.warning("%s: the peer sent no network key", prefix)
            raise _KeyMismatch
        try:
            plaintext = open_handshake(
                self._handshake_cipher, bytes(body), encode_handshake_envelope(envelope.frame_type, True)
            )
        except FrameRejected as error:
            logger.warning("%s", prefix)
            raise _KeyMismatch from error
        return decode_json_body(plaintext)

    def _check_peer_identity(self, node_id: NodeId, identity_key: bytes, origin: str) -> str | None:
        """Why we refuse to talk to this node (whitelist, pinned key), or None if it may join."""
        if not self._membership.allows(node_id):
            logger.warning("refused node %r from %s: it is not in whitelist_node_ids", node_id, origin)
            return "not whitelisted"
        if node_id == self.node_id and identity_key != self._identity.public_key:
            logger.error("refused node %r from %s: it claims this node's own id", node_id, origin)
            return "identity key mismatch"
        if not self._membership.pinned_keys.accepts(node_id, identity_key):
            logger.error(
                "refused node %r from %s: its identity key differs from the one first seen for that id "
                "(impersonation, or a node whose credentials were replaced)",
                node_id,
                origin,
            )
            return "identity key mismatch"
        return None

    # ----------------------------------------------------------------- inbound (ROUTER)

    async def _read_router(self) -> None:
        assert self._router is not None
        while True:
            frames = await self._router.recv_multipart(copy=False)
            if len(frames) < 2:
                continue
            routing_id = frames[0].bytes
            try:
                await self._on_inbound(routing_id, frames[1:])
            except MalformedFrame as error:
                # Garbage from a client that does not speak this protocol: drop the frame, keep serving.
                logger.warning(
                    "dropped malformed frame from %s: %s", self._origin_of(routing_id, frames[1]), error
                )

    def _origin_of(self, routing_id: bytes, frame: zmq.Frame) -> str:
        state = self._inbound.get(routing_id)
        if state is not None:
            return state.address
        try:
            return str(frame.get("Peer-Address"))
        except zmq.ZMQError:
            # The transport does not report the peer address (e.g. inproc): say so.
            return "an unknown address"

    async def _reply_inbound(self, routing_id: bytes, frames: list[bytes]) -> None:
        assert self._router is not None
        with contextlib.suppress(zmq.ZMQError):
            # EHOSTUNREACH: the connection went away before our reply; nobody is left to tell.
            await self._router.send_multipart([routing_id, *frames], copy=False)

    async def _refuse(self, routing_id: bytes, reason: str) -> None:
        await self._reply_inbound(
            routing_id,
            [encode_handshake_envelope("refuse", sealed=False), encode_json_body({"reason": reason})],
        )

    async def _on_inbound(self, routing_id: bytes, frames: list[zmq.Frame]) -> None:
        envelope = decode_envelope(frames[0].buffer)
        origin = self._origin_of(routing_id, frames[0])
        if envelope.frame_type == "data":
            state = self._inbound.get(routing_id)
            if state is None or state.session is None or len(frames) != 3:
                await self._refuse(routing_id, "unknown session")
                return
            await self._on_data(state.session, envelope, frames[1].buffer, frames[2].buffer, routing_id)
            return
        if len(frames) != 2:
            raise MalformedFrame("a handshake message has two frames")
        try:
            fields = self._open_handshake_body(envelope, frames[1].buffer, origin)
        except _KeyMismatch:
            await self._refuse(routing_id, REFUSAL_KEY_MISMATCH)
            return
        if envelope.frame_type == "hello":
            await self._on_hello(routing_id, origin, fields)
        elif envelope.frame_type == "auth":
            await self._on_auth(routing_id, origin, fields)
        else:
            raise MalformedFrame(f"unexpected {envelope.frame_type} frame on an inbound connection")

    async def _on_hello(self, routing_id: bytes, origin: str, fields: dict[str, Any]) -> None:
        client = Greeting.from_wire(fields)
        refusal = self._check_peer_identity(client.node_id, client.identity_key, origin)
        if refusal is not None:
            await self._refuse(routing_id, refusal)
            return
        side = HandshakeSide(self._identity)
        transcript_bytes = transcript(client, side.greeting, self._network_key is not None)
        if len(self._inbound) >= _MAX_PENDING_HANDSHAKES:
            self._forget_stale_handshakes()
        self._inbound[routing_id] = _InboundState(origin, handshake=(side, client, transcript_bytes))
        welcome = {
            "greeting": side.greeting.to_wire(),
            "signature": sign_as_server(side, transcript_bytes).hex(),
        }
        await self._reply_inbound(routing_id, self._handshake_frames("welcome", welcome))

    def _forget_stale_handshakes(self) -> None:
        for routing_id in [key for key, state in self._inbound.items() if state.session is None]:
            del self._inbound[routing_id]

    async def _on_auth(self, routing_id: bytes, origin: str, fields: dict[str, Any]) -> None:
        state = self._inbound.get(routing_id)
        if state is None or state.handshake is None:
            await self._refuse(routing_id, "unknown session")
            return
        side, client, transcript_bytes = state.handshake
        try:
            check_client_signature(client, transcript_bytes, bytes.fromhex(str(fields.get("signature"))))
            keys = side.session_keys(transcript_bytes, client, self._network_key)
        except (HandshakeFailed, ValueError) as error:
            # A forged or garbled signature: the client did not prove it holds its key.
            logger.warning("refused node %r from %s: %s", client.node_id, origin, error)
            del self._inbound[routing_id]
            await self._refuse(routing_id, "handshake failed")
            return
        for other_id, other in list(self._inbound.items()):
            if other.session is not None and other.session.peer_id == client.node_id:
                del self._inbound[other_id]  # the peer reconnected: its old connection is dead
        await self._reply_inbound(routing_id, self._handshake_frames("ready", {}))

        async def transmit(frames: list[bytes]) -> None:
            await self._reply_inbound(routing_id, frames)

        state.session = Session(
            self.node_id,
            client.node_id,
            origin,
            keys.server_to_client,
            keys.client_to_server,
            transmit,
            is_client=False,
        )
        state.handshake = None
        self._membership.forget_departure(client.node_id)
        self._membership.mark_heard(client.node_id, time.monotonic())
        logger.info("accepted node %r from %s", client.node_id, origin)

    # ----------------------------------------------------------------- messages (both directions)

    async def _on_data(
        self,
        session: Session,
        envelope: Envelope,
        sealed_header: memoryview,
        sealed_payload: memoryview,
        reply_to: bytes | None,
    ) -> None:
        try:
            inner, payload = session.open(envelope, sealed_header, sealed_payload)
        except FrameRejected as error:
            logger.warning(
                "rejected frame from %s (node %r): %s", session.peer_address, session.peer_id, error
            )
            return
        sender = session.peer_id
        self._membership.mark_heard(sender, time.monotonic())
        if inner.role in ("response", "error"):
            self._on_reply(sender, inner.role, inner.correlation_id, inner.header, payload)
        elif envelope.kind.startswith(RESERVED_KIND_PREFIX):
            await self._on_network_message(session, envelope.kind, inner.role, inner.correlation_id, payload)
        elif inner.role == "request":
            self._spawn(
                self._answer_request(session, envelope.kind, inner.correlation_id, inner.header, payload)
            )
        else:
            handler = self._handlers.get(envelope.kind)
            if handler is None:
                logger.warning("no handler for %r messages (from node %r); dropped", envelope.kind, sender)
                return
            try:
                await handler(sender, inner.header, payload)
            except Exception:
                # A handler bug must not stop this connection's reader; it is logged with its traceback.
                logger.exception("handler for %r failed on a message from node %r", envelope.kind, sender)

    def _on_reply(
        self, sender: NodeId, role: str, correlation_id: int, header: Header, payload: bytes
    ) -> None:
        pending = self._pending.get(correlation_id)
        if pending is None or pending[0] != sender or pending[1].done():
            return  # heartbeat replies, and late replies to requests that timed out
        if role == "error":
            message = header.get("error", "unknown error") if isinstance(header, dict) else "unknown error"
            pending[1].set_exception(PeerRequestFailed(f"node {sender!r} failed the request: {message}"))
        else:
            pending[1].set_result((header, payload))

    async def _answer_request(
        self, session: Session, kind: str, correlation_id: int, header: Header, payload: bytes
    ) -> None:
        handler = self._handlers.get(kind)
        if handler is None:
            await session.send(kind, "error", correlation_id, {"error": f"no handler for {kind!r}"}, b"")
            return
        try:
            reply = await handler(session.peer_id, header, payload)
        except Exception as error:
            # The requester is waiting: tell it what went wrong instead of letting it time out.
            logger.exception("handler for %r failed on a request from node %r", kind, session.peer_id)
            await session.send(
                kind, "error", correlation_id, {"error": f"{type(error).__name__}: {error}"}, b""
            )
            return
        reply_header, reply_payload = reply if reply is not None else ({}, b"")
        await session.send(kind, "response", correlation_id, reply_header, reply_payload)

    async def _on_network_message(
        self, session: Session, kind: str, role: str, correlation_id: int, payload: bytes
    ) -> None:
        if kind == KIND_PING:
            if role == "request":
                await session.send(KIND_PING, "response", correlation_id, b"", b"")
        elif kind == KIND_GOSSIP:
            self._on_gossip(session.peer_id, payload)
        elif kind == KIND_LEAVE:
            logger.info("node %r left the network", session.peer_id)
            self._drop_peer(session.peer_id, "it left the network")

    # ----------------------------------------------------------------- gossip

    def _gossip_payload(self) -> bytes:
        records = list(self._membership.live_records().values())
        if self._own_record is not None:
            records.append(self._own_record)
        return json.dumps([signed.to_wire() for signed in records], separators=(",", ":")).encode()

    def _on_gossip(self, sender: NodeId, payload: bytes) -> None:
        try:
            entries = json.loads(payload)
            signed_records = [SignedRecord.from_wire(entry) for entry in entries]
        except (ValueError, TypeError) as error:
            # A peer sent records we cannot parse: ignore this gossip round, keep the session.
            logger.warning("ignored malformed gossip from node %r: %s", sender, error)
            return
        now = time.monotonic()
        changed = False
        for signed in signed_records:
            node_id = signed.record.node_id
            was_live = self._membership.is_live(node_id)
            verdict = self._membership.consider(signed, now)
            if verdict == "key_conflict":
                logger.error(
                    "ignored a record for node %r (via %r): signed by another key than the one first seen",
                    node_id,
                    sender,
                )
            elif verdict == "bad_signature":
                logger.warning("ignored a record for node %r (via %r): bad signature", node_id, sender)
            elif verdict == "accepted":
                if self._membership.is_connected(node_id):
                    changed = True
                    self._maybe_joined(node_id, already_live=was_live)
                else:
                    self._connect_to_record(signed.record, now)
        if changed:
            self._notify_records_changed()

    def _maybe_joined(self, node_id: NodeId, already_live: bool) -> None:
        if not already_live and self._membership.is_live(node_id):
            logger.info("node %r joined", node_id)
            self._notify(self._local.observers_joined, node_id)

    def _push_gossip(self, connection: _OutboundConnection) -> None:
        if connection.session is None:
            return
        # The peer's queue is full or it is gone: the next round (or failure detection) follows.
        _send_if_possible(connection, KIND_GOSSIP, "oneway", self._gossip_payload())

    # ----------------------------------------------------------------- outbound (DEALER)

    def _connect_to_record(self, record: NodeRecord, now: float) -> None:
        schedule = self._record_retries.setdefault(record.node_id, _RetrySchedule())
        if (record.address, record.port) in self._outbound or now < schedule.next_attempt:
            return
        self._open_connection(record.address, record.port, record.node_id)

    def _open_connection(self, address: str, port: int, expected_id: NodeId | None) -> None:
        assert self._context is not None
        socket = self._context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.IMMEDIATE, 1)
        socket.setsockopt(zmq.RECONNECT_IVL, 100)
        socket.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        socket.setsockopt(zmq.SNDTIMEO, int(self.failure_timeout_s * 1000))
        socket.connect(f"tcp://{address}:{port}")
        connection = _OutboundConnection(address, port, expected_id, socket)
        self._outbound[(address, port)] = connection
        connection.task = self._spawn(self._run_connection(connection))

    def _close_connection(self, connection: _OutboundConnection) -> None:
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

    def _connection_failed(self, connection: _OutboundConnection) -> None:
        now = time.monotonic()
        schedule = self._bootstrap.get((connection.address, connection.port))
        if schedule is None and connection.expected_id is not None:
            schedule = self._record_retries.setdefault(connection.expected_id, _RetrySchedule())
        if schedule is not None:
            schedule.failed(now)
        self._close_connection(connection)

    async def _run_connection(self, connection: _OutboundConnection) -> None:
        try:
            session = await asyncio.wait_for(self._client_handshake(connection), self._handshake_timeout_s)
        except TimeoutError:
            # wait_for's timeout: nothing (or nothing we could use) came back in time.
            logger.warning(
                "peer %s did not answer our handshake within %g s (not running, or not reachable)",
                connection.label,
                self._handshake_timeout_s,
            )
            self._connection_failed(connection)
            return
        except HandshakeRefused as refusal:
            # An explicit refusal: the peer told us why.
            logger.warning("peer %s refused us: %s", connection.label, refusal)
            self._connection_failed(connection)
            return
        except (HandshakeFailed, _KeyMismatch, MalformedFrame, ValueError) as error:
            # The peer did not prove who it is (or is a node we must not talk to): logged, not connected.
            if str(error):
                logger.warning("handshake with %s failed: %s", connection.label, error)
            self._connection_failed(connection)
            return
        if session is None:  # a second connection to a peer we already reach, or to ourselves
            self._close_connection(connection)
            return
        self._on_connection_ready(connection, session)
        await self._read_connection(connection, session)

    async def _receive_handshake(
        self, connection: _OutboundConnection, expected: FrameType
    ) -> dict[str, Any]:
        frames = await connection.socket.recv_multipart(copy=False)
        envelope = decode_envelope(frames[0].buffer)
        if envelope.frame_type == "refuse":
            reason = decode_json_body(frames[1].buffer).get("reason", "no reason given")
            raise HandshakeRefused(str(reason))
        if envelope.frame_type != expected or len(frames) != 2:
            raise MalformedFrame(f"expected a {expected} frame, got {envelope.frame_type}")
        return self._open_handshake_body(envelope, frames[1].buffer, connection.label)

    async def _client_handshake(self, connection: _OutboundConnection) -> Session | None:
        side = HandshakeSide(self._identity)
        await connection.socket.send_multipart(self._handshake_frames("hello", side.greeting.to_wire()))
        fields = await self._receive_handshake(connection, "welcome")
        server = Greeting.from_wire(fields.get("greeting") or {})
        transcript_bytes = transcript(side.greeting, server, self._network_key is not None)
        check_server_signature(server, transcript_bytes, bytes.fromhex(str(fields.get("signature"))))
        if server.node_id == self.node_id and server.identity_key == self._identity.public_key:
            return None
        if connection.expected_id is not None and server.node_id != connection.expected_id:
            raise HandshakeFailed(f"expected node {connection.expected_id!r} there, found {server.node_id!r}")
        refusal = self._check_peer_identity(server.node_id, server.identity_key, connection.label)
        if refusal is not None:
            raise HandshakeFailed("")  # already logged by the check
        await connection.socket.send_multipart(
            self._handshake_frames("auth", {"signature": sign_as_client(side, transcript_bytes).hex()})
        )
        await self._receive_handshake(connection, "ready")
        keys = side.session_keys(transcript_bytes, server, self._network_key)

        async def transmit(frames: list[bytes]) -> None:
            await connection.socket.send_multipart(frames, copy=False)

        schedule = self._bootstrap.get((connection.address, connection.port))
        if schedule is not None:
            schedule.resolved_id = server.node_id
        existing = self._peer_connections.get(server.node_id)
        if existing is not None and existing is not connection and existing.session is not None:
            return None
        return Session(
            self.node_id,
            server.node_id,
            connection.label,
            keys.client_to_server,
            keys.server_to_client,
            transmit,
            is_client=True,
        )

    def _on_connection_ready(self, connection: _OutboundConnection, session: Session) -> None:
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
        logger.info("connected to node %r at %s", peer, connection.label)
        self._push_gossip(connection)
        if self._membership.is_live(peer):
            self._maybe_joined(peer, already_live=False)
            self._notify_records_changed()

    async def _read_connection(self, connection: _OutboundConnection, session: Session) -> None:
        while True:
            frames = await connection.socket.recv_multipart(copy=False)
            try:
                envelope = decode_envelope(frames[0].buffer)
                if envelope.frame_type == "refuse":
                    reason = decode_json_body(frames[1].buffer).get("reason", "no reason given")
                    logger.warning(
                        "peer %s (node %r) closed our session: %s", connection.label, session.peer_id, reason
                    )
                    self._drop_peer(session.peer_id, f"it refused our session ({reason})")
                    return
                if envelope.frame_type != "data" or len(frames) != 3:
                    raise MalformedFrame(f"unexpected {envelope.frame_type} frame on an open session")
                await self._on_data(session, envelope, frames[1].buffer, frames[2].buffer, None)
            except MalformedFrame as error:
                # The peer sent something we cannot parse: drop the frame, keep the session.
                logger.warning("dropped malformed frame from %s: %s", connection.label, error)

    # ----------------------------------------------------------------- failure detection & upkeep

    def _drop_peer(self, node_id: NodeId, reason: str) -> None:
        was_live = self._membership.drop(node_id, time.monotonic())
        connection = self._peer_connections.pop(node_id, None)
        if connection is not None:
            self._close_connection(connection)
        for routing_id, state in list(self._inbound.items()):
            if state.session is not None and state.session.peer_id == node_id:
                del self._inbound[routing_id]
        for pending_node, future in self._pending.values():
            if pending_node == node_id and not future.done():
                future.set_exception(PeerLostError(f"node {node_id!r} was lost: {reason}"))
        if was_live:
            logger.warning("lost node %r: %s", node_id, reason)
            self._notify(self._local.observers_lost, node_id)
            self._notify_records_changed()

    async def _maintain(self) -> None:
        """Heartbeats, failure detection, bootstrap retries and gossip, every heartbeat interval."""
        gossip_every = max(1, round(1.0 / self._heartbeat_interval_s))
        for tick in itertools.count():
            now = time.monotonic()
            # Checked once per tick, so a peer silent for (timeout - tick) is dropped by the timeout.
            silence_limit = self.failure_timeout_s - self._heartbeat_interval_s
            for node_id in self._membership.silent_peers(now, silence_limit):
                self._drop_peer(node_id, f"no answer for {self.failure_timeout_s:g} s")
            self._retry_bootstrap(now)
            for connection in list(self._peer_connections.values()):
                self._send_heartbeat(connection)
            if tick % gossip_every == 0 or self._gossip_now.is_set():
                self._gossip_now.clear()
                for connection in list(self._peer_connections.values()):
                    self._push_gossip(connection)
            with contextlib.suppress(TimeoutError):
                # Timing out is the normal way to the next tick; the event only makes gossip come sooner.
                await asyncio.wait_for(self._gossip_now.wait(), self._heartbeat_interval_s)

    def _send_heartbeat(self, connection: _OutboundConnection) -> None:
        if connection.session is None:
            return
        # No connected pipe (peer down) or queue full: the missing answer is what failure detection sees.
        _send_if_possible(connection, KIND_PING, "request", b"")

    def _retry_bootstrap(self, now: float) -> None:
        for (address, port), schedule in self._bootstrap.items():
            if (address, port) in self._outbound or now < schedule.next_attempt:
                continue
            if schedule.resolved_id is not None and self._membership.is_connected(schedule.resolved_id):
                continue
            schedule.next_attempt = now + 1.0
            self._open_connection(address, port, None)


def _send_if_possible(connection: _OutboundConnection, kind: str, role: Role, payload: bytes) -> bool:
    """Queue a network-internal message without waiting; False if ZeroMQ cannot take it now."""
    if connection.session is None:
        return False
    frames = connection.session.seal(kind, role, _HEARTBEAT_CORRELATION_ID, b"", payload)
    future = connection.socket.send_multipart(frames, flags=zmq.DONTWAIT)
    if not future.done():
        future.add_done_callback(_ignore_send_outcome)
        return True
    return future.exception() is None


def _ignore_send_outcome(future: asyncio.Future[Any]) -> None:
    # Retrieve (and so silence) the error of a best-effort send; failure detection covers the loss.
    if not future.cancelled():
        future.exception()
