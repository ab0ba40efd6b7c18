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

All of it runs on the caller's asyncio loop; ZeroMQ's own I/O thread and the
step-lane thread are the only other threads.

This module holds the lifecycle and the public API; the parts live beside it:
:mod:`~language_pipes.network.connections` (sockets and connection state),
:mod:`~language_pipes.network.receive` (every asyncio receive loop and its
guard), :mod:`~language_pipes.network.handshake_flow`,
:mod:`~language_pipes.network.gossip`, :mod:`~language_pipes.network.dispatch`,
:mod:`~language_pipes.network.upkeep` and :mod:`~language_pipes.network.step_lanes`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from language_pipes.network.connections import (
    KIND_LEAVE,
    ConnectionsMixin,
    Handler,
    Header,
    InboundState,
    LocalState,
    OutboundConnection,
    PeerObserver,
    RecordsObserver,
    Reply,
    RetrySchedule,
    configure_socket,
    send_if_possible,
)
from language_pipes.network.crypto import handshake_cipher
from language_pipes.network.dispatch import DispatchMixin
from language_pipes.network.gossip import GossipMixin
from language_pipes.network.guard import FrameGuard, TokenBucket
from language_pipes.network.handshake_flow import HandshakeFlow
from language_pipes.network.identity import NodeIdentity
from language_pipes.network.lanes import LaneClients, LaneHandler, LaneServer
from language_pipes.network.limits import CONNECT_BURST, CONNECT_RATE_PER_S, DEFAULT_MAX_MESSAGE_BYTES
from language_pipes.network.membership import Membership, SignedRecord, sign_record
from language_pipes.network.pins import PinnedKeys
from language_pipes.network.receive import ReceiveLoops
from language_pipes.network.session import Session
from language_pipes.network.step_lanes import StepLanesMixin
from language_pipes.network.types import (
    RESERVED_KIND_PREFIX,
    HostedSegment,
    NetworkError,
    NodeId,
    NodeRecord,
    NotWhitelistedError,
    PeerRequestTimeout,
    PeerUnavailableError,
)
from language_pipes.network.upkeep import UpkeepMixin

__all__ = ["Handler", "Header", "PeerNetwork", "Reply"]

logger = logging.getLogger(__name__)


class PeerNetwork(
    ReceiveLoops, HandshakeFlow, GossipMixin, DispatchMixin, ConnectionsMixin, UpkeepMixin, StepLanesMixin
):
    """One node's membership in the peer-to-peer network.

    ``failure_timeout_s`` bounds how long a silent peer stays listed: it is
    dropped (and ``on_peer_lost`` fires) at most that long after it was last
    heard. Heartbeats go every ``heartbeat_interval_s`` (default: an eighth of
    the timeout, between 0.1 and 1 s).

    The peer port and the lane port bind ``listen_host``, which defaults to
    ``advertise_ip`` (never every interface unless asked for). Every socket
    caps frames at ``max_message_bytes``. ``pins_file`` keeps pinned identity
    keys across restarts (:mod:`language_pipes.network.pins`); None keeps them
    in memory only.
    """

    def __init__(
        self,
        identity: NodeIdentity,
        *,
        listen_host: str | None = None,
        peer_port: int = 0,
        advertise_ip: str = "127.0.0.1",
        network_key: bytes | None = None,
        whitelist: Iterable[str] = (),
        bootstrap: Iterable[tuple[str, int]] = (),
        failure_timeout_s: float = 4.0,
        heartbeat_interval_s: float | None = None,
        handshake_timeout_s: float = 2.0,
        lane_port: int | None = 0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        pins_file: Path | None = None,
    ) -> None:
        self.node_id = identity.node_id
        self._identity = identity
        self._log = logger
        self._guard = FrameGuard(logger)
        self._listen_host = listen_host or advertise_ip
        self._max_message_bytes = max_message_bytes
        self._pins_file = pins_file
        self._connect_budget = TokenBucket(CONNECT_RATE_PER_S, CONNECT_BURST)
        self.peer_port = peer_port
        self._advertise_ip = advertise_ip
        self._network_key = network_key
        self._handshake_cipher = handshake_cipher(network_key)
        self._bootstrap = {(address, port): RetrySchedule() for address, port in bootstrap}
        self.failure_timeout_s = failure_timeout_s
        self._heartbeat_interval_s = heartbeat_interval_s or min(1.0, max(0.1, failure_timeout_s / 8))
        self._handshake_timeout_s = handshake_timeout_s
        self._membership = Membership(
            identity, whitelist, PinnedKeys(pins_file), departed_memory_s=2 * failure_timeout_s
        )
        self._local = LocalState()
        self._own_record: SignedRecord | None = None
        self._handlers: dict[str, Handler] = {}
        self._context: zmq.asyncio.Context | None = None
        self._router: zmq.asyncio.Socket | None = None
        self._inbound: dict[bytes, InboundState] = {}
        self._outbound: dict[tuple[str, int], OutboundConnection] = {}
        self._peer_connections: dict[NodeId, OutboundConnection] = {}
        self._record_retries: dict[NodeId, RetrySchedule] = {}
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
        configure_socket(self._router, self._max_message_bytes)
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if self.peer_port == 0:
            self.peer_port = self._router.bind_to_random_port(f"tcp://{self._listen_host}")
        else:
            self._router.bind(f"tcp://{self._listen_host}:{self.peer_port}")
        if self._lane_port is not None:
            self._start_lanes(self._lane_port)
        self._sign_own_record()
        self._running = True
        self._spawn(self._supervised_router())
        self._spawn(self._supervised_maintain())
        logger.info("node %s listening for peers on %s:%d", self.node_id, self._listen_host, self.peer_port)
        if self._network_key is None:
            logger.warning(
                "NO network_key IS SET: ANY node that can reach %s:%d can join this network, see its "
                "records and send it work. Set network_key (make one with: language-pipes keygen) "
                "and give it only to nodes you trust.",
                self._listen_host,
                self.peer_port,
            )

    @property
    def dropped_frames(self) -> int:
        """Frames the receive loops dropped because handling them failed (garbage, hostile, or a bug)."""
        return self._guard.dropped_frames

    @property
    def loop_restarts(self) -> int:
        """How often a supervisor restarted a receive loop that died anyway."""
        return self._guard.restarts

    @property
    def has_network_key(self) -> bool:
        """False when anyone who can reach the peer port may join (shown loudly at start)."""
        return self._network_key is not None

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
                send_if_possible(connection, KIND_LEAVE, "oneway", b"")
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
