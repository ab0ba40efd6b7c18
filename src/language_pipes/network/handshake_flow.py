"""The handshake as this node runs it, on both sides of a connection.

The pure steps (greetings, transcript, signatures) are in
:mod:`language_pipes.network.handshake`; this module sends and reads the
frames and applies policy: whitelist, and pinned identity keys. A key is
pinned only *after* the peer's signature over the transcript verified, so a
``hello`` alone (which anyone can send for any node id) pins nothing.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from language_pipes.network.connections import InboundState, OutboundConnection
from language_pipes.network.crypto import FrameRejected, open_handshake, seal_handshake
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
from language_pipes.network.limits import MAX_INBOUND_SESSIONS, MAX_PENDING_HANDSHAKES
from language_pipes.network.session import Session
from language_pipes.network.types import NodeId
from language_pipes.network.wire import (
    Envelope,
    FrameType,
    MalformedFrame,
    decode_envelope,
    decode_json_body,
    encode_handshake_envelope,
    encode_json_body,
)

if TYPE_CHECKING:
    from language_pipes.network.peer_network import PeerNetwork

REFUSAL_KEY_MISMATCH = "network key mismatch"


class HandshakeRefused(Exception):
    """The other side answered our handshake with an explicit refusal."""


class KeyMismatch(Exception):
    """A handshake frame sealed with another network key (or sealed/unsealed when it should not be)."""


class HandshakeFlow:
    """Client and server side of the handshake (a part of PeerNetwork)."""

    # ------------------------------------------------------------- frames

    def _handshake_frames(self: PeerNetwork, frame_type: FrameType, fields: dict[str, Any]) -> list[bytes]:
        body = encode_json_body(fields)
        if self._handshake_cipher is None:
            return [encode_handshake_envelope(frame_type, sealed=False), body]
        envelope = encode_handshake_envelope(frame_type, sealed=True)
        return [envelope, seal_handshake(self._handshake_cipher, body, envelope)]

    def _open_handshake_body(
        self: PeerNetwork, envelope: Envelope, body: bytes | memoryview, origin: str
    ) -> dict[str, Any]:
        """Decrypt and parse a handshake body, logging (and raising KeyMismatch) if keys differ."""
        prefix = "rejected frame from %s: authentication failed (wrong network key?)"
        if self._handshake_cipher is None:
            if envelope.sealed:
                self._guard.log.warning(
                    "key", prefix + ": the peer uses a network key and this node has none", origin
                )
                raise KeyMismatch
            return decode_json_body(body)
        if not envelope.sealed:
            self._guard.log.warning("key", prefix + ": the peer sent no network key", origin)
            raise KeyMismatch
        try:
            plaintext = open_handshake(
                self._handshake_cipher, bytes(body), encode_handshake_envelope(envelope.frame_type, True)
            )
        except FrameRejected as error:
            self._guard.log.warning("key", prefix, origin)
            raise KeyMismatch from error
        return decode_json_body(plaintext)

    def _check_peer_identity(
        self: PeerNetwork, node_id: NodeId, identity_key: bytes, origin: str
    ) -> str | None:
        """Why we refuse this node (whitelist, pinned key), or None if it may join. Pins nothing."""
        if not self._membership.allows(node_id):
            self._guard.log.warning(
                "whitelist", "refused node %r from %s: it is not in whitelist_node_ids", node_id, origin
            )
            return "not whitelisted"
        if node_id == self.node_id and identity_key != self._identity.public_key:
            self._guard.log.warning(
                "own-id", "refused node %r from %s: it claims this node's own id", node_id, origin
            )
            return "identity key mismatch"
        if self._membership.pinned_keys.conflicts(node_id, identity_key):
            self._guard.log.warning(
                "pinned-key",
                "refused node %r from %s: its identity key differs from the one pinned for that id "
                "(impersonation, or a node whose credentials were replaced: to trust its new key, "
                "delete its line from %s)",
                node_id,
                origin,
                self._pins_file or "the pinned keys (in memory: restart this node)",
            )
            return "identity key mismatch"
        return None

    def _pin_proven_key(self: PeerNetwork, node_id: NodeId, identity_key: bytes, origin: str) -> bool:
        """The peer signed the transcript with ``identity_key``: pin it (False if another won meanwhile)."""
        if node_id == self.node_id:
            return identity_key == self._identity.public_key
        if not self._membership.pinned_keys.pin(node_id, identity_key):
            self._check_peer_identity(node_id, identity_key, origin)  # logs the refusal
            return False
        self._membership.key_pinned(node_id, identity_key)
        return True

    # ------------------------------------------------------------- client side (we dialled)

    async def _receive_handshake(
        self: PeerNetwork, connection: OutboundConnection, expected: FrameType
    ) -> dict[str, Any]:
        frames = await connection.socket.recv_multipart(copy=False)
        envelope = decode_envelope(frames[0].buffer)
        if envelope.frame_type == "refuse" and len(frames) == 2:
            reason = decode_json_body(frames[1].buffer).get("reason", "no reason given")
            raise HandshakeRefused(str(reason)[:200])
        if envelope.frame_type != expected or len(frames) != 2:
            raise MalformedFrame(f"expected a {expected} frame, got {envelope.frame_type}")
        return self._open_handshake_body(envelope, frames[1].buffer, connection.label)

    async def _client_handshake(self: PeerNetwork, connection: OutboundConnection) -> Session | None:
        side = HandshakeSide(self._identity)
        await connection.socket.send_multipart(self._handshake_frames("hello", side.greeting.to_wire()))
        fields = await self._receive_handshake(connection, "welcome")
        greeting = fields.get("greeting")
        server = Greeting.from_wire(greeting if isinstance(greeting, dict) else {})
        transcript_bytes = transcript(side.greeting, server, self._network_key is not None)
        check_server_signature(server, transcript_bytes, bytes.fromhex(str(fields.get("signature"))))
        if server.node_id == self.node_id and server.identity_key == self._identity.public_key:
            return None
        if connection.expected_id is not None and server.node_id != connection.expected_id:
            raise HandshakeFailed(f"expected node {connection.expected_id!r} there, found {server.node_id!r}")
        refusal = self._check_peer_identity(server.node_id, server.identity_key, connection.label)
        if refusal is not None or not self._pin_proven_key(
            server.node_id, server.identity_key, connection.label
        ):
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

    # ------------------------------------------------------------- server side (they dialled)

    async def _on_hello(self: PeerNetwork, routing_id: bytes, origin: str, fields: dict[str, Any]) -> None:
        client = Greeting.from_wire(fields)
        refusal = self._check_peer_identity(client.node_id, client.identity_key, origin)
        if refusal is not None:
            await self._refuse(routing_id, refusal)
            return
        side = HandshakeSide(self._identity)
        transcript_bytes = transcript(client, side.greeting, self._network_key is not None)
        if len(self._inbound) >= MAX_PENDING_HANDSHAKES:
            self._forget_stale_handshakes()
        if len(self._inbound) >= MAX_INBOUND_SESSIONS:
            await self._refuse(routing_id, "too many connections")
            return
        self._inbound[routing_id] = InboundState(origin, handshake=(side, client, transcript_bytes))
        welcome = {
            "greeting": side.greeting.to_wire(),
            "signature": sign_as_server(side, transcript_bytes).hex(),
        }
        await self._reply_inbound(routing_id, self._handshake_frames("welcome", welcome))

    def _forget_stale_handshakes(self: PeerNetwork) -> None:
        for routing_id in [key for key, state in self._inbound.items() if state.session is None]:
            del self._inbound[routing_id]

    async def _on_auth(self: PeerNetwork, routing_id: bytes, origin: str, fields: dict[str, Any]) -> None:
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
            self._guard.log.warning("auth", "refused node %r from %s: %s", client.node_id, origin, error)
            del self._inbound[routing_id]
            await self._refuse(routing_id, "handshake failed")
            return
        if not self._pin_proven_key(client.node_id, client.identity_key, origin):
            del self._inbound[routing_id]
            await self._refuse(routing_id, "identity key mismatch")
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
        self._log.info("accepted node %r from %s", client.node_id, origin)

    async def _refuse(self: PeerNetwork, routing_id: bytes, reason: str) -> None:
        await self._reply_inbound(
            routing_id,
            [encode_handshake_envelope("refuse", sealed=False), encode_json_body({"reason": reason})],
        )
