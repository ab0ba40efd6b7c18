"""The receive loops of the peer network, each with its guard.

* :meth:`ReceiveLoops._read_router`: every frame peers send to our peer port.
* :meth:`ReceiveLoops._run_connection` / ``_read_connection``: one per
  outbound connection, the handshake and then the frames the peer sends back.

Guard, the same for every loop: whatever handling one frame raises, that frame
is dropped and counted (``PeerNetwork.dropped_frames``) and logged
rate-limited (:class:`language_pipes.network.guard.FrameGuard`). A loop that
dies anyway is restarted (:func:`language_pipes.network.guard.supervise`) or,
for a connection, closed and dialled again later. The step-lane thread has the
same guard in :mod:`language_pipes.network.lanes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import zmq

from language_pipes.network.connections import OutboundConnection
from language_pipes.network.guard import supervise
from language_pipes.network.handshake import HandshakeFailed
from language_pipes.network.handshake_flow import REFUSAL_KEY_MISMATCH, HandshakeRefused, KeyMismatch
from language_pipes.network.session import Session
from language_pipes.network.wire import MalformedFrame, decode_envelope, decode_json_body

if TYPE_CHECKING:
    from language_pipes.network.peer_network import PeerNetwork

LOOP_PEER_PORT = "peer port"
LOOP_CONNECTION = "connection"


class ReceiveLoops:
    """The asyncio receive loops (a part of PeerNetwork)."""

    # ------------------------------------------------------------- inbound: the ROUTER socket

    async def _supervised_router(self: PeerNetwork) -> None:
        await supervise("the peer-port receive loop", self._read_router, self._guard, lambda: self._running)

    async def _read_router(self: PeerNetwork) -> None:
        assert self._router is not None
        while True:
            frames = await self._router.recv_multipart(copy=False)
            if len(frames) < 2:
                continue
            routing_id = frames[0].bytes
            try:
                await self._on_inbound(routing_id, frames[1:])
            except asyncio.CancelledError:
                raise
            except Exception as error:
                # Guard: one frame, whatever it holds, costs only itself; counted and logged rate-limited.
                self._guard.dropped(LOOP_PEER_PORT, self._origin_of(routing_id, frames[1]), error)

    def _origin_of(self: PeerNetwork, routing_id: bytes, frame: zmq.Frame) -> str:
        state = self._inbound.get(routing_id)
        if state is not None:
            return state.address
        try:
            return str(frame.get("Peer-Address"))
        except zmq.ZMQError:
            # The transport does not report the peer address (e.g. inproc): say so.
            return "an unknown address"

    async def _reply_inbound(self: PeerNetwork, routing_id: bytes, frames: list[Any]) -> None:
        assert self._router is not None
        with contextlib.suppress(zmq.ZMQError):
            # EHOSTUNREACH: the connection went away before our reply; nobody is left to tell.
            await self._router.send_multipart([routing_id, *frames], copy=False)

    async def _on_inbound(self: PeerNetwork, routing_id: bytes, frames: list[zmq.Frame]) -> None:
        envelope = decode_envelope(frames[0].buffer)
        origin = self._origin_of(routing_id, frames[0])
        if envelope.frame_type == "data":
            state = self._inbound.get(routing_id)
            if state is None or state.session is None or len(frames) != 3:
                await self._refuse(routing_id, "unknown session")
                return
            await self._on_data(state.session, envelope, frames[1].buffer, frames[2].buffer)
            return
        if len(frames) != 2:
            raise MalformedFrame("a handshake message has two frames")
        try:
            fields = self._open_handshake_body(envelope, frames[1].buffer, origin)
        except KeyMismatch:
            await self._refuse(routing_id, REFUSAL_KEY_MISMATCH)
            return
        if envelope.frame_type == "hello":
            await self._on_hello(routing_id, origin, fields)
        elif envelope.frame_type == "auth":
            await self._on_auth(routing_id, origin, fields)
        else:
            raise MalformedFrame(f"unexpected {envelope.frame_type} frame on an inbound connection")

    # ------------------------------------------------------------- outbound: one DEALER per peer

    async def _supervised_connection(self: PeerNetwork, connection: OutboundConnection) -> None:
        try:
            await self._run_connection(connection)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Nothing per-frame caught this (the socket itself failed?): close it; it is dialled again later.
            self._guard.restarts += 1
            self._guard.log.log(
                logging.ERROR, "connection-died", "connection to %s died", connection.label, exc_info=True
            )
            self._connection_failed(connection)

    async def _run_connection(self: PeerNetwork, connection: OutboundConnection) -> None:
        try:
            session = await asyncio.wait_for(self._client_handshake(connection), self._handshake_timeout_s)
        except TimeoutError:
            # wait_for's timeout: nothing (or nothing we could use) came back in time.
            self._guard.log.warning(
                "handshake-timeout",
                "peer %s did not answer our handshake within %g s (not running, or not reachable)",
                connection.label,
                self._handshake_timeout_s,
            )
            self._connection_failed(connection)
            return
        except HandshakeRefused as refusal:
            # An explicit refusal: the peer told us why.
            self._guard.log.warning("handshake-refused", "peer %s refused us: %s", connection.label, refusal)
            self._connection_failed(connection)
            return
        except (HandshakeFailed, KeyMismatch, MalformedFrame, ValueError, TypeError, KeyError) as error:
            # The peer did not prove who it is, sent garbage, or is a node we must not talk to.
            if str(error):
                self._guard.log.warning(
                    "handshake-failed", "handshake with %s failed: %s", connection.label, error
                )
            self._connection_failed(connection)
            return
        if session is None:  # a second connection to a peer we already reach, or to ourselves
            self._close_connection(connection)
            return
        self._on_connection_ready(connection, session)
        await self._read_connection(connection, session)

    async def _read_connection(self: PeerNetwork, connection: OutboundConnection, session: Session) -> None:
        while True:
            frames = await connection.socket.recv_multipart(copy=False)
            try:
                await self._on_outbound_frames(connection, session, frames)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                # Guard: drop and count this frame, keep the session.
                self._guard.dropped(LOOP_CONNECTION, connection.label, error)

    async def _on_outbound_frames(
        self: PeerNetwork, connection: OutboundConnection, session: Session, frames: list[zmq.Frame]
    ) -> None:
        envelope = decode_envelope(frames[0].buffer)
        if envelope.frame_type == "refuse":
            # Unsealed, so anyone on the path could have sent it: it proves nothing and closes nothing.
            # If the peer really lost our session (it restarted), its silence drops it within the timeout.
            reason = decode_json_body(frames[1].buffer).get("reason") if len(frames) == 2 else None
            self._guard.log.warning(
                "refuse-on-session",
                "peer %s (node %r) sent an unauthenticated refusal (%s); ignored while it still answers",
                connection.label,
                session.peer_id,
                str(reason)[:200],
            )
            return
        if envelope.frame_type != "data" or len(frames) != 3:
            raise MalformedFrame(f"unexpected {envelope.frame_type} frame on an open session")
        await self._on_data(session, envelope, frames[1].buffer, frames[2].buffer)
