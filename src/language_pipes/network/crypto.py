"""Symmetric cryptography of peer traffic: key derivation and sealed frames.

Two layers:

* The **network key** (``network_key``, 16 bytes) goes through HKDF-SHA256 to a
  ChaCha20-Poly1305 key that seals the handshake. A node with another key, or
  none, cannot read or forge a handshake, so it never gets a session.
* Each authenticated connection then gets its own pair of **session keys** (one
  per direction) from HKDF over an ephemeral X25519 secret, both handshake
  nonces and the network key. Frames are sealed with the session key of their
  direction and a nonce made of a 64-bit counter: a key never sees the same
  nonce twice, and the receiver rejects any counter that is not larger than the
  last one it accepted (replays and reordering).

Without a network key the session is still encrypted and authenticated (the
X25519 secret alone keys it); only admission is open to any node.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

NETWORK_KEY_BYTES = 16
SESSION_KEY_BYTES = 32
HANDSHAKE_NONCE_BYTES = 12
_HKDF_SALT = b"language-pipes network v1"
_COUNTER_NONCE = struct.Struct("!4xQ")
_MAX_COUNTER = 2**64 - 2


class FrameRejected(Exception):
    """A sealed frame failed authentication or replay protection."""


def parse_network_key(text: str) -> bytes:
    """The 16 key bytes of a ``network_key`` config value (32 hex characters)."""
    cleaned = text.strip()
    if len(cleaned) != 2 * NETWORK_KEY_BYTES:
        raise ValueError("network_key must be 32 hexadecimal characters")
    return bytes.fromhex(cleaned)


def handshake_cipher(network_key: bytes | None) -> ChaCha20Poly1305 | None:
    """The cipher that seals handshake frames, or None on a network without a key."""
    if network_key is None:
        return None
    if len(network_key) != NETWORK_KEY_BYTES:
        raise ValueError(f"network key must be {NETWORK_KEY_BYTES} bytes")
    key = HKDF(hashes.SHA256(), SESSION_KEY_BYTES, _HKDF_SALT, b"handshake").derive(network_key)
    return ChaCha20Poly1305(key)


def seal_handshake(cipher: ChaCha20Poly1305, plaintext: bytes, associated: bytes) -> bytes:
    """Random-nonce sealing: handshakes are rare, so 96 random bits never collide in practice."""
    nonce = os.urandom(HANDSHAKE_NONCE_BYTES)
    return nonce + cipher.encrypt(nonce, plaintext, associated)


def open_handshake(cipher: ChaCha20Poly1305, sealed: bytes, associated: bytes) -> bytes:
    nonce, body = sealed[:HANDSHAKE_NONCE_BYTES], sealed[HANDSHAKE_NONCE_BYTES:]
    try:
        return cipher.decrypt(nonce, body, associated)
    except (InvalidTag, ValueError) as error:
        # InvalidTag: other key or tampered; ValueError: truncated nonce.
        raise FrameRejected("authentication failed") from error


def derive_session_keys(
    shared_secret: bytes, network_key: bytes | None, transcript: bytes
) -> tuple[bytes, bytes]:
    """(client-to-server key, server-to-client key) for one connection."""
    material = HKDF(
        hashes.SHA256(),
        2 * SESSION_KEY_BYTES,
        _HKDF_SALT + (network_key or b""),
        b"session " + transcript,
    ).derive(shared_secret)
    return material[:SESSION_KEY_BYTES], material[SESSION_KEY_BYTES:]


LANE_TAG_BYTES = 16


def derive_lane_secret(client_to_server: bytes, server_to_client: bytes) -> tuple[bytes, bytes]:
    """(tag, root key) of a session's step lanes; both ends of the session derive the same pair.

    The tag names the session in the clear on a lane; the root key never leaves the two nodes.
    """
    material = HKDF(hashes.SHA256(), LANE_TAG_BYTES + SESSION_KEY_BYTES, _HKDF_SALT, b"step lanes").derive(
        client_to_server + server_to_client
    )
    return material[:LANE_TAG_BYTES], material[LANE_TAG_BYTES:]


def derive_lane_keys(root: bytes, client_id: str, lane_id: int) -> tuple[bytes, bytes]:
    """(request key, reply key) of one lane, opened by node ``client_id`` with a random ``lane_id``."""
    info = b"lane " + client_id.encode() + b"\x00" + struct.pack("!Q", lane_id)
    material = HKDF(hashes.SHA256(), 2 * SESSION_KEY_BYTES, _HKDF_SALT, info).derive(root)
    return material[:SESSION_KEY_BYTES], material[SESSION_KEY_BYTES:]


class SendingCipher:
    """Seals the frames of one direction of a session; every seal uses a fresh counter."""

    def __init__(self, key: bytes) -> None:
        self._cipher = ChaCha20Poly1305(key)
        self._next_counter = 0

    @property
    def next_counter(self) -> int:
        """The counter the next :meth:`seal` starts from (to name it in the associated data)."""
        return self._next_counter

    def seal(self, associated: bytes, *parts: bytes | memoryview) -> tuple[int, list[bytes]]:
        """Seal each part under its own counter; returns the first counter and the sealed parts."""
        first = self.reserve(len(parts))
        return first, self.seal_at(first, associated, *parts)

    def reserve(self, count: int) -> int:
        """Take ``count`` counters for a later :meth:`seal_at` (frames must still leave in counter order)."""
        first = self._next_counter
        if first + count > _MAX_COUNTER:
            raise OverflowError("session counter exhausted; reconnect")
        self._next_counter = first + count
        return first

    def seal_at(self, first: int, associated: bytes, *parts: bytes | memoryview) -> list[bytes]:
        """Seal each part under the counters :meth:`reserve` returned ``first`` of (any thread)."""
        return [
            self._cipher.encrypt(_COUNTER_NONCE.pack(first + index), part, associated)
            for index, part in enumerate(parts)
        ]


class ReceivingCipher:
    """Opens the frames of one direction of a session; counters must strictly increase."""

    def __init__(self, key: bytes) -> None:
        self._cipher = ChaCha20Poly1305(key)
        self._lowest_acceptable = 0

    def open(self, first_counter: int, associated: bytes, *sealed: bytes | memoryview) -> list[bytes]:
        if first_counter + len(sealed) > _MAX_COUNTER + 1:
            raise FrameRejected(f"counter {first_counter} out of range")
        if first_counter < self._lowest_acceptable:
            raise FrameRejected(
                f"replayed or reordered frame (counter {first_counter} < {self._lowest_acceptable})"
            )
        try:
            opened = [
                self._cipher.decrypt(_COUNTER_NONCE.pack(first_counter + index), part, associated)
                for index, part in enumerate(sealed)
            ]
        except InvalidTag as error:
            # Wrong key, tampered bytes or a counter that does not match the nonce used.
            raise FrameRejected("authentication failed") from error
        self._lowest_acceptable = first_counter + len(sealed)
        return opened
