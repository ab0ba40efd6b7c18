"""The mutual authentication of a new connection, as pure functions over plain data.

Client (the side that connects) and server (the side that accepts) each send
their node id, identity public key, an ephemeral X25519 public key and a fresh
32-byte nonce. Each then signs the *transcript* (both ids, both identity keys,
both ephemeral keys, both nonces) with its identity key: the server in
``welcome``, the client in ``auth``. A signature over the other side's fresh
nonce proves possession of the private key right now (no replay of an old
handshake), and the ephemeral X25519 secret plus the network key give the
session keys (see :mod:`language_pipes.network.crypto`).

The caller decides policy (whitelist, trust on first use) from the ids and keys
this module returns.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from language_pipes.network.crypto import derive_session_keys
from language_pipes.network.identity import NodeIdentity, signature_is_valid
from language_pipes.network.types import NodeId
from language_pipes.network.wire import MalformedFrame

NONCE_BYTES = 32


class HandshakeFailed(Exception):
    """The other side did not prove its identity."""


@dataclass(frozen=True)
class Greeting:
    """What one side announces: who it is and its fresh handshake material."""

    node_id: NodeId
    identity_key: bytes
    ephemeral_key: bytes
    nonce: bytes

    def to_wire(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "identity_key": self.identity_key.hex(),
            "ephemeral_key": self.ephemeral_key.hex(),
            "nonce": self.nonce.hex(),
        }

    @staticmethod
    def from_wire(fields: dict[str, Any]) -> Greeting:
        try:
            node_id = fields["node_id"]
            identity_key = bytes.fromhex(fields["identity_key"])
            ephemeral_key = bytes.fromhex(fields["ephemeral_key"])
            nonce = bytes.fromhex(fields["nonce"])
        except (KeyError, TypeError, ValueError) as error:
            # Missing field, wrong type or bad hex: the peer does not speak this protocol.
            raise MalformedFrame(f"bad greeting: {error}") from error
        if not isinstance(node_id, str) or not node_id:
            raise MalformedFrame("bad greeting: node_id")
        if len(identity_key) != 32 or len(ephemeral_key) != 32 or len(nonce) != NONCE_BYTES:
            raise MalformedFrame("bad greeting: key or nonce length")
        return Greeting(NodeId(node_id), identity_key, ephemeral_key, nonce)


@dataclass(frozen=True)
class SessionKeys:
    """The two directional keys of an authenticated connection."""

    client_to_server: bytes
    server_to_client: bytes


class HandshakeSide:
    """One side's ephemeral state for one handshake."""

    def __init__(self, identity: NodeIdentity) -> None:
        self.identity = identity
        self._ephemeral = X25519PrivateKey.generate()
        self.greeting = Greeting(
            node_id=identity.node_id,
            identity_key=identity.public_key,
            ephemeral_key=self._ephemeral.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            ),
            nonce=os.urandom(NONCE_BYTES),
        )

    def session_keys(
        self, transcript_bytes: bytes, other: Greeting, network_key: bytes | None
    ) -> SessionKeys:
        try:
            shared = self._ephemeral.exchange(X25519PublicKey.from_public_bytes(other.ephemeral_key))
        except ValueError as error:
            # A low-order or otherwise invalid X25519 point: refuse rather than derive a weak key.
            raise HandshakeFailed("invalid ephemeral key") from error
        client_to_server, server_to_client = derive_session_keys(shared, network_key, transcript_bytes)
        return SessionKeys(client_to_server, server_to_client)


def transcript(client: Greeting, server: Greeting, has_network_key: bool) -> bytes:
    """The unambiguous byte string both sides sign."""
    fields = [
        b"language-pipes handshake v1",
        client.node_id.encode(),
        server.node_id.encode(),
        client.identity_key,
        server.identity_key,
        client.ephemeral_key,
        server.ephemeral_key,
        client.nonce,
        server.nonce,
        b"keyed" if has_network_key else b"open",
    ]
    return b"".join(struct.pack("!I", len(field)) + field for field in fields)


def sign_as_server(side: HandshakeSide, transcript_bytes: bytes) -> bytes:
    return side.identity.sign(b"server " + transcript_bytes)


def sign_as_client(side: HandshakeSide, transcript_bytes: bytes) -> bytes:
    return side.identity.sign(b"client " + transcript_bytes)


def check_server_signature(server: Greeting, transcript_bytes: bytes, signature: bytes) -> None:
    if not signature_is_valid(server.identity_key, signature, b"server " + transcript_bytes):
        raise HandshakeFailed(f"node {server.node_id!r} did not prove possession of its identity key")


def check_client_signature(client: Greeting, transcript_bytes: bytes, signature: bytes) -> None:
    if not signature_is_valid(client.identity_key, signature, b"client " + transcript_bytes):
        raise HandshakeFailed(f"node {client.node_id!r} did not prove possession of its identity key")
