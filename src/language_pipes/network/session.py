"""An authenticated, encrypted connection to one peer (either direction).

A session seals every outgoing message with its sending key and opens every
incoming one with its receiving key (see :mod:`language_pipes.network.crypto`);
the associated data binds the sender's node id and the message kind, so a
frame cannot be passed off as coming from another node or as another kind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from language_pipes.network.bulk import BULK_SEAL_BYTES, run_bulk
from language_pipes.network.crypto import ReceivingCipher, SendingCipher, derive_lane_secret
from language_pipes.network.types import NodeId
from language_pipes.network.wire import (
    Envelope,
    InnerHeader,
    Role,
    decode_inner_header,
    encode_data_envelope,
    encode_inner_header,
)

Transmit = Callable[[Sequence[bytes]], Awaitable[Any]]


def data_associated_bytes(sender_id: str, kind: str) -> bytes:
    return b"language-pipes data\x00" + sender_id.encode() + b"\x00" + kind.encode()


class Session:
    """One direction pair of keys plus the way to put frames on this connection."""

    def __init__(
        self,
        own_id: NodeId,
        peer_id: NodeId,
        peer_address: str,
        sending_key: bytes,
        receiving_key: bytes,
        transmit: Transmit,
        *,
        is_client: bool,
    ) -> None:
        self.own_id = own_id
        self.peer_id = peer_id
        self.peer_address = peer_address
        self._sending = SendingCipher(sending_key)
        self._receiving = ReceivingCipher(receiving_key)
        self._transmit = transmit
        self._last_bulk: asyncio.Future[None] | None = None  # the last message sealed off the loop
        # Step lanes (network/lanes.py) are keyed from this session: the tag names it, the root keys them.
        client_to_server, server_to_client = (
            (sending_key, receiving_key) if is_client else (receiving_key, sending_key)
        )
        self.lane_tag, self.lane_root = derive_lane_secret(client_to_server, server_to_client)

    def seal(
        self,
        kind: str,
        role: Role,
        correlation_id: int,
        header: dict[str, Any] | bytes,
        payload: bytes | memoryview,
    ) -> list[bytes]:
        """The frames of one message; sealing takes the next counters, so send them in this order."""
        inner = encode_inner_header(role, correlation_id, header)
        first_counter, (sealed_header, sealed_payload) = self._sending.seal(
            data_associated_bytes(self.own_id, kind), inner, payload
        )
        return [encode_data_envelope(first_counter, kind), sealed_header, sealed_payload]

    async def send(
        self,
        kind: str,
        role: Role,
        correlation_id: int,
        header: dict[str, Any] | bytes,
        payload: bytes | memoryview,
    ) -> None:
        if len(payload) < BULK_SEAL_BYTES and self._last_bulk is None:
            # seal() and the synchronous part of transmit() run without yielding, so
            # concurrent senders hand frames to ZeroMQ in counter order.
            await self._transmit(self.seal(kind, role, correlation_id, header, payload))
            return
        await self._send_in_order(kind, role, correlation_id, header, payload)

    async def _send_in_order(
        self,
        kind: str,
        role: Role,
        correlation_id: int,
        header: dict[str, Any] | bytes,
        payload: bytes | memoryview,
    ) -> None:
        """A big payload is sealed on a low-priority bulk thread (network/bulk.py), off the event loop.

        Its counters are taken now; every message sent after it, big or small, waits for the one
        before it to leave, so frames still reach ZeroMQ in counter order.
        """
        before = self._last_bulk
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._last_bulk = mine
        try:
            first = self._sending.reserve(2)
            associated = data_associated_bytes(self.own_id, kind)
            inner = encode_inner_header(role, correlation_id, header)
            if len(payload) >= BULK_SEAL_BYTES:
                sealed = await run_bulk(self._sending.seal_at, first, associated, inner, payload)
            else:
                sealed = self._sending.seal_at(first, associated, inner, payload)
            if before is not None:
                await asyncio.shield(before)
            await self._transmit([encode_data_envelope(first, kind), *sealed])
        finally:
            mine.set_result(None)
            if self._last_bulk is mine:
                self._last_bulk = None

    def open(
        self, envelope: Envelope, sealed_header: bytes | memoryview, sealed_payload: bytes | memoryview
    ) -> tuple[InnerHeader, bytes]:
        """Authenticate and decrypt one message; raises FrameRejected or MalformedFrame."""
        inner, payload = self._receiving.open(
            envelope.counter,
            data_associated_bytes(self.peer_id, envelope.kind),
            sealed_header,
            sealed_payload,
        )
        return decode_inner_header(inner), payload
