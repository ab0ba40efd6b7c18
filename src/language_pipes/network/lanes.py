"""Step lanes: direct request/reply channels for pipe steps, beside the peer network.

The peer network runs on the node's event loop, so one message crosses several
threads on each side (scheduler thread, event loop, ZeroMQ I/O thread, then on
the other node the I/O thread, the event loop and the compute thread) and a
pipe step waits on every handoff twice per generated token. A lane skips the
event loops: the origin's scheduler thread owns a blocking ZeroMQ DEALER
socket to the layer node, whose lane thread owns a ROUTER socket and runs the
step itself.

Lanes add no trust of their own. Each one is keyed from the peer-network
session between the two nodes (HKDF over the session keys, the origin's node
id and a random lane id), so only the two ends of a live session can open or
answer it, and a node dropped from the network loses its session and with it
every lane. Frames are sealed with ChaCha20-Poly1305 under counter nonces and
the receiver refuses any counter it has passed, as on the session itself.

Wire format (ZeroMQ multipart; the prefix is the sealed frames' associated data)::

    request  [prefix, sealed header, sealed payload]
             prefix = MAGIC | session tag (16) | lane id (8) | counter (8) | kind (UTF-8)
    reply    [prefix, body]
             prefix = MAGIC | status (1) | request counter (8) | counter (8)

A reply's body is sealed, except for ``STATUS_UNKNOWN`` (no session to seal
with): the origin then sends its steps over the peer network instead.
"""

from __future__ import annotations

import logging
import secrets
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import zmq

from language_pipes.network.connections import configure_socket
from language_pipes.network.crypto import (
    LANE_TAG_BYTES,
    FrameRejected,
    ReceivingCipher,
    SendingCipher,
    derive_lane_keys,
)
from language_pipes.network.guard import RESTART_PAUSE_MAX_S, RESTART_PAUSE_S, FrameGuard
from language_pipes.network.limits import DEFAULT_MAX_MESSAGE_BYTES
from language_pipes.network.session import Session
from language_pipes.network.types import (
    NodeId,
    PeerLostError,
    PeerRequestFailed,
    PeerRequestTimeout,
)
from language_pipes.network.wire import MalformedFrame

logger = logging.getLogger(__name__)

MAGIC = b"LPL1"
KIND_LANE_PING = "lane.ping"
STATUS_OK, STATUS_FAILED, STATUS_UNKNOWN = 0, 1, 2
# How often a waiting origin checks that the peer is still live (the reply itself wakes it at once).
POLL_SLICE_S = 0.1
_REQUEST_PREFIX = struct.Struct(f"!4s{LANE_TAG_BYTES}sQQ")
_REPLY_PREFIX = struct.Struct("!4sBQQ")

# Runs a lane request on the lane thread: (sender, header, payload) -> reply payload.
LaneHandler = Callable[[NodeId, bytes, bytes], bytes | memoryview]
# The session (of an inbound connection) whose lane tag is this, if it is still open.
SessionByTag = Callable[[bytes], Session | None]


class LaneRefused(Exception):
    """The peer has no session for this lane (it restarted, or dropped us): use the peer network."""


@dataclass(frozen=True)
class RequestPrefix:
    tag: bytes
    lane_id: int
    counter: int
    kind: str

    def encode(self) -> bytes:
        return _REQUEST_PREFIX.pack(MAGIC, self.tag, self.lane_id, self.counter) + self.kind.encode()

    @staticmethod
    def decode(data: bytes) -> RequestPrefix:
        if len(data) <= _REQUEST_PREFIX.size or not data.startswith(MAGIC):
            raise MalformedFrame("not a lane request")
        _, tag, lane_id, counter = _REQUEST_PREFIX.unpack_from(data)
        try:
            kind = data[_REQUEST_PREFIX.size :].decode()
        except UnicodeDecodeError as error:
            raise MalformedFrame("lane request kind is not UTF-8") from error
        return RequestPrefix(tag, lane_id, counter, kind)


@dataclass(frozen=True)
class ReplyPrefix:
    status: int
    request_counter: int
    counter: int

    def encode(self) -> bytes:
        return _REPLY_PREFIX.pack(MAGIC, self.status, self.request_counter, self.counter)

    @staticmethod
    def decode(data: bytes) -> ReplyPrefix:
        if len(data) != _REPLY_PREFIX.size or not data.startswith(MAGIC):
            raise MalformedFrame("not a lane reply")
        _, status, request_counter, counter = _REPLY_PREFIX.unpack(data)
        return ReplyPrefix(status, request_counter, counter)


class ServerLane:
    """The layer node's end of one lane: opens requests, seals replies."""

    def __init__(self, session: Session, lane_id: int) -> None:
        self.session = session
        request_key, reply_key = derive_lane_keys(session.lane_root, session.peer_id, lane_id)
        self._receiving = ReceivingCipher(request_key)
        self._sending = SendingCipher(reply_key)

    def open(self, prefix: RequestPrefix, associated: bytes, header: bytes, payload: bytes) -> list[bytes]:
        """The request's header and payload; raises FrameRejected for a forged or replayed frame."""
        return self._receiving.open(prefix.counter, associated, header, payload)

    def seal_reply(self, status: int, request_counter: int, body: bytes | memoryview) -> list[bytes]:
        prefix = ReplyPrefix(status, request_counter, self._sending.next_counter).encode()
        _, (sealed,) = self._sending.seal(prefix, body)
        return [prefix, sealed]


LOOP_LANES = "step lanes"


class LaneServer:
    """Answers lane requests on one thread, which also runs the handlers (no further handoff).

    Guard: whatever answering one frame raises, that frame is dropped and
    counted in ``guard`` (logged rate-limited); should the serving loop die
    anyway, the thread starts it again after a short pause.
    """

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        host: str,
        port: int,
        sessions: SessionByTag,
        *,
        guard: FrameGuard | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ):
        self._guard = guard or FrameGuard(logger)
        self._socket = context.socket(zmq.ROUTER)
        configure_socket(self._socket, max_message_bytes)
        if port == 0:
            self.port = self._socket.bind_to_random_port(f"tcp://{host}")
        else:
            self._socket.bind(f"tcp://{host}:{port}")
            self.port = port
        self._sessions = sessions
        self._handlers: dict[str, LaneHandler] = {}
        self._lanes: dict[tuple[bytes, int], ServerLane] = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="step-lanes", daemon=True)

    def register(self, kind: str, handler: LaneHandler) -> None:
        self._handlers[kind] = handler

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        """The lane thread: the serving loop under its supervisor; the socket closes only on stop."""
        pause = RESTART_PAUSE_S
        try:
            while not self._stopping.is_set():
                try:
                    self._serve_until_stopped()
                except Exception:
                    # The per-frame guard missed this (the socket itself failed?): log, pause, serve again.
                    self._guard.restarts += 1
                    self._guard.log.log(
                        logging.ERROR,
                        "restart:lanes",
                        "the step-lane loop died; restarting it",
                        exc_info=True,
                    )
                    self._stopping.wait(pause)
                    pause = min(RESTART_PAUSE_MAX_S, pause * 2)
        finally:
            self._socket.close(linger=0)

    def _serve_until_stopped(self) -> None:
        while not self._stopping.is_set():
            if not self._socket.poll(POLL_SLICE_S * 1000):
                continue
            frames = self._socket.recv_multipart()
            try:
                self._answer(frames)
            except Exception as error:
                # Guard: one frame, whatever it holds, costs only itself.
                self._guard.dropped(LOOP_LANES, "a lane peer", error)

    def _answer(self, frames: list[bytes]) -> None:
        if len(frames) != 4:
            return  # not a lane request; nothing to answer
        routing_id, associated, sealed_header, sealed_payload = frames
        prefix = RequestPrefix.decode(associated)  # MalformedFrame: dropped and counted by the guard
        session = self._sessions(prefix.tag)
        if session is None:
            self._refuse(routing_id, prefix, "no open session for this lane")
            return
        key = (prefix.tag, prefix.lane_id)
        lane = self._lanes.get(key)
        if lane is None or lane.session is not session:
            self._forget_closed_sessions()
            lane = ServerLane(session, prefix.lane_id)
        try:
            header, payload = lane.open(prefix, associated, sealed_header, sealed_payload)
        except FrameRejected as error:
            self._guard.log.warning(
                "lane-rejected", "rejected a lane frame from node %r: %s", session.peer_id, error
            )
            self._refuse(routing_id, prefix, "frame rejected")
            return
        self._lanes[key] = lane  # kept only once a frame proved the sender holds the session
        status, body = self._run(session.peer_id, prefix.kind, header, payload)
        self._socket.send_multipart([routing_id, *lane.seal_reply(status, prefix.counter, body)], copy=False)

    def _run(
        self, sender: NodeId, kind: str, header: bytes, payload: bytes
    ) -> tuple[int, bytes | memoryview]:
        if kind == KIND_LANE_PING:
            return STATUS_OK, b""
        handler = self._handlers.get(kind)
        if handler is None:
            return STATUS_FAILED, f"no lane handler for {kind!r}".encode()
        try:
            return STATUS_OK, handler(sender, header, payload)
        except Exception as error:
            # The origin is waiting: tell it what went wrong instead of letting it time out.
            logger.exception("lane handler for %r failed on a request from node %r", kind, sender)
            return STATUS_FAILED, f"{type(error).__name__}: {error}".encode()

    def _refuse(self, routing_id: bytes, prefix: RequestPrefix, reason: str) -> None:
        reply = ReplyPrefix(STATUS_UNKNOWN, prefix.counter, 0).encode()
        self._socket.send_multipart([routing_id, reply, reason.encode()])

    def _forget_closed_sessions(self) -> None:
        # A lane's receiving counter is its replay protection, so a lane is only dropped with its session.
        for key, lane in list(self._lanes.items()):
            if self._sessions(key[0]) is not lane.session:
                del self._lanes[key]


class LaneClient:
    """One origin thread's lane to one peer: a blocking DEALER socket and the lane's ciphers.

    Only the thread that created it may use it (ZeroMQ sockets are not thread-safe).
    """

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        session: Session,
        address: str,
        port: int,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.session = session
        self.endpoint = (address, port)
        self._lane_id = secrets.randbits(64)
        request_key, reply_key = derive_lane_keys(session.lane_root, session.own_id, self._lane_id)
        self._sending = SendingCipher(request_key)
        self._receiving = ReceivingCipher(reply_key)
        self._socket = context.socket(zmq.DEALER)
        configure_socket(self._socket, max_message_bytes)
        self._socket.connect(f"tcp://{address}:{port}")

    def request(
        self,
        kind: str,
        header: bytes,
        payload: bytes | memoryview,
        timeout: float,
        peer_problem: Callable[[], str | None],
    ) -> bytes:
        """Send one request and block until its reply.

        ``peer_problem`` is asked every :data:`POLL_SLICE_S` while waiting; a
        non-None answer (the peer was lost) ends the wait with PeerLostError.
        Raises LaneRefused when the peer has no session for this lane,
        PeerRequestFailed when its handler failed, PeerRequestTimeout.
        """
        peer = self.session.peer_id
        prefix = RequestPrefix(self.session.lane_tag, self._lane_id, self._sending.next_counter, kind)
        associated = prefix.encode()
        _, sealed = self._sending.seal(associated, header, payload)
        self._socket.send_multipart([associated, *sealed], copy=False)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PeerRequestTimeout(f"no reply from node {peer!r} to {kind!r} within {timeout:g} s")
            if not self._socket.poll(min(POLL_SLICE_S, remaining) * 1000):
                problem = peer_problem()
                if problem is not None:
                    raise PeerLostError(f"node {peer!r} was lost: {problem}")
                continue
            frames = self._socket.recv_multipart()
            if len(frames) != 2:
                continue
            try:
                reply = ReplyPrefix.decode(frames[0])
            except MalformedFrame:
                continue
            if reply.request_counter != prefix.counter:
                continue  # a late reply to a request that timed out
            if reply.status == STATUS_UNKNOWN:
                raise LaneRefused(f"node {peer!r} refused the lane: {frames[1].decode(errors='replace')}")
            try:
                (body,) = self._receiving.open(reply.counter, frames[0], frames[1])
            except FrameRejected:
                logger.warning("rejected a lane reply from node %r", peer)
                continue
            if reply.status != STATUS_OK:
                raise PeerRequestFailed(f"node {peer!r} failed the request: {body.decode(errors='replace')}")
            return body

    def close(self) -> None:
        self._socket.close(linger=0)


# A new lane must answer a ping this fast, or the origin uses the peer network for that peer.
PROBE_TIMEOUT_S = 2.0
# How long an endpoint that failed the probe is left alone before the next try.
UNUSABLE_RETRY_S = 30.0


class LaneClients:
    """Each calling thread's lanes to its peers: opened on first use, probed, replaced with the session."""

    def __init__(
        self, context: zmq.Context[zmq.Socket[bytes]], max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ) -> None:
        self._context = context
        self._max_message_bytes = max_message_bytes
        self._local = threading.local()
        self._unusable: dict[tuple[NodeId, str, int], float] = {}

    def _clients(self) -> dict[NodeId, LaneClient]:
        clients: dict[NodeId, LaneClient] | None = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        return clients

    def for_peer(self, session: Session, address: str, port: int) -> LaneClient | None:
        """This thread's lane to ``session``'s peer at ``address:port``, or None if it does not answer."""
        clients = self._clients()
        peer = session.peer_id
        client = clients.get(peer)
        if client is not None and client.session is session and client.endpoint == (address, port):
            return client
        self.discard(peer)
        endpoint = (peer, address, port)
        if time.monotonic() < self._unusable.get(endpoint, 0.0):
            return None
        client = LaneClient(self._context, session, address, port, self._max_message_bytes)
        try:
            client.request(KIND_LANE_PING, b"", b"", PROBE_TIMEOUT_S, lambda: None)
        except (LaneRefused, PeerRequestTimeout) as error:
            client.close()
            self._unusable[endpoint] = time.monotonic() + UNUSABLE_RETRY_S
            logger.warning(
                "no step lane to node %r at %s:%d (%s); its pipe steps go over the peer network",
                peer,
                address,
                port,
                error,
            )
            return None
        clients[peer] = client
        return client

    def discard(self, peer: NodeId) -> None:
        """Close this thread's lane to ``peer`` (the next request opens a new one)."""
        client = self._clients().pop(peer, None)
        if client is not None:
            client.close()
