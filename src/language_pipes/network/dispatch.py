"""Dispatch of authenticated messages: replies, network-internal kinds and handlers.

A data frame reaches this module only from a receive loop
(:mod:`language_pipes.network.receive`), which drops and counts whatever this
module raises for one frame. Handlers' own exceptions are caught here: a
one-way handler's bug is logged, a request handler's becomes an error reply.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from language_pipes.network.connections import KIND_GOSSIP, KIND_LEAVE, KIND_PING, Header
from language_pipes.network.crypto import FrameRejected
from language_pipes.network.session import Session
from language_pipes.network.types import (
    RESERVED_KIND_PREFIX,
    NodeId,
    PeerRequestFailed,
    RequestRefused,
    refusal_kind,
)
from language_pipes.network.wire import Envelope

if TYPE_CHECKING:
    from language_pipes.network.peer_network import PeerNetwork


class DispatchMixin:
    """What happens to one opened data frame (a part of PeerNetwork)."""

    async def _on_data(
        self: PeerNetwork,
        session: Session,
        envelope: Envelope,
        sealed_header: memoryview,
        sealed_payload: memoryview,
    ) -> None:
        try:
            inner, payload = session.open(envelope, sealed_header, sealed_payload)
        except FrameRejected as error:
            self._guard.log.warning(
                "rejected",
                "rejected frame from %s (node %r): %s",
                session.peer_address,
                session.peer_id,
                error,
            )
            return
        sender = session.peer_id
        outbound = self._peer_connections.get(sender)
        if outbound is not None and outbound.session is session:
            # Only answers on our own connection prove the peer still holds our session: a peer that
            # dropped us on its side alone (its loop stalled past the timeout) reconnects and keeps
            # talking inbound while refusing what we send, and must still fall silent here, be
            # dropped and be dialled afresh.
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
                self._guard.log.warning(
                    "no-handler", "no handler for %r messages (from node %r); dropped", envelope.kind, sender
                )
                return
            try:
                await handler(sender, inner.header, payload)
            except Exception:
                # A handler bug must not stop this connection's reader; it is logged with its traceback.
                self._log.exception("handler for %r failed on a message from node %r", envelope.kind, sender)

    def _on_reply(
        self: PeerNetwork, sender: NodeId, role: str, correlation_id: int, header: Header, payload: bytes
    ) -> None:
        pending = self._pending.get(correlation_id)
        if pending is None or pending[0] != sender or pending[1].done():
            return  # heartbeat replies, and late replies to requests that timed out
        if role == "error":
            fields = header if isinstance(header, dict) else {}
            message = fields.get("error", "unknown error")
            failure = PeerRequestFailed(
                f"node {sender!r} failed the request: {message}", refusal_kind(fields.get("refusal"))
            )
            pending[1].set_exception(failure)
        else:
            pending[1].set_result((header, payload))

    async def _answer_request(
        self: PeerNetwork, session: Session, kind: str, correlation_id: int, header: Header, payload: bytes
    ) -> None:
        handler = self._handlers.get(kind)
        if handler is None:
            await session.send(kind, "error", correlation_id, {"error": f"no handler for {kind!r}"}, b"")
            return
        try:
            reply = await handler(session.peer_id, header, payload)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            # The requester is waiting: tell it what went wrong instead of letting it time out.
            error_header: dict[str, object] = {"error": f"{type(error).__name__}: {error}"}
            if isinstance(error, RequestRefused):
                # A deliberate refusal: its typed kind travels, so the requester never parses our words.
                self._log.info("refused a %r request from node %r: %s", kind, session.peer_id, error)
                error_header["refusal"] = error.kind.value
            else:
                self._log.exception("handler for %r failed on a request from node %r", kind, session.peer_id)
            await session.send(kind, "error", correlation_id, error_header, b"")
            return
        reply_header, reply_payload = reply if reply is not None else ({}, b"")
        await session.send(kind, "response", correlation_id, reply_header, reply_payload)

    async def _on_network_message(
        self: PeerNetwork, session: Session, kind: str, role: str, correlation_id: int, payload: bytes
    ) -> None:
        if kind == KIND_PING:
            if role == "request":
                await session.send(KIND_PING, "response", correlation_id, b"", b"")
        elif kind == KIND_GOSSIP:
            self._on_gossip(session.peer_id, payload)
        elif kind == KIND_LEAVE:
            self._log.info("node %r left the network", session.peer_id)
            self._drop_peer(session.peer_id, "it left the network")
