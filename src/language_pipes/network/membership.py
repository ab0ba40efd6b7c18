"""Who is in the network: signed node records, pinned identity keys, liveness.

Pure bookkeeping, no sockets, so it can be tested on its own. The transport
(:mod:`language_pipes.network.peer_network`) feeds it what arrives (gossiped
records, authenticated sessions, heartbeats) and acts on what it answers.

A peer is *live* when this node holds a verified record for it and an
authenticated outbound session to it that answered within the failure
timeout. Only live peers (and this node) appear in :meth:`Membership.live_records`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from language_pipes.network.identity import NodeIdentity, signature_is_valid
from language_pipes.network.limits import MAX_KNOWN_RECORDS, MAX_PENDING_PER_SENDER, RECORD_TTL_S
from language_pipes.network.pins import PinnedKeys
from language_pipes.network.types import NodeId, NodeRecord

__all__ = ["Membership", "PinnedKeys", "RecordVerdict", "SignedRecord", "sign_record"]

_RECORD_SIGNATURE_CONTEXT = b"language-pipes node record v1\n"

RecordVerdict = Literal[
    "accepted",  # new or newer: stored (the caller should connect if not connected)
    "unchanged",  # same or older version than the one held
    "self",  # our own id with our own key: nothing to do
    "bad_signature",
    "key_conflict",  # the id is pinned to another key: impersonation attempt
    "not_whitelisted",
    "departed",  # a version of a peer we dropped a moment ago
    "malformed",
    "full",  # the record table (or this sender's share of unconnected records) is full
]


@dataclass(frozen=True)
class SignedRecord:
    """A node record with its owner's signature over :func:`record_signing_bytes`."""

    record: NodeRecord
    signature: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"record": self.record.to_wire(), "signature": self.signature.hex()}

    @staticmethod
    def from_wire(data: Any) -> SignedRecord:
        if not isinstance(data, dict):
            raise ValueError("signed record must be an object")
        return SignedRecord(
            NodeRecord.from_wire(data.get("record")), bytes.fromhex(str(data.get("signature")))
        )


def record_signing_bytes(record: NodeRecord) -> bytes:
    return (
        _RECORD_SIGNATURE_CONTEXT
        + json.dumps(record.to_wire(), sort_keys=True, separators=(",", ":")).encode()
    )


def sign_record(identity: NodeIdentity, record: NodeRecord) -> SignedRecord:
    if record.node_id != identity.node_id or record.public_key != identity.public_key:
        raise ValueError("a node signs only its own record")
    return SignedRecord(record, identity.sign(record_signing_bytes(record)))


def record_signature_is_valid(signed: SignedRecord) -> bool:
    return signature_is_valid(signed.record.public_key, signed.signature, record_signing_bytes(signed.record))


_KEYED_WHITELIST_ENTRY = re.compile(r"(?P<node_id>.+)@(?P<key>[0-9a-fA-F]{64})")


def parse_whitelist_entry(entry: str) -> tuple[NodeId, bytes | None]:
    """``"node-id"``, or ``"node-id@<64 hex>"`` to also pin that node's identity key from the start."""
    match = _KEYED_WHITELIST_ENTRY.fullmatch(entry)
    if match is None:
        return NodeId(entry), None
    return NodeId(match["node_id"]), bytes.fromhex(match["key"])


class Membership:
    """Records, sessions and heartbeats of every peer this node knows."""

    def __init__(
        self,
        own_identity: NodeIdentity,
        whitelist: Iterable[str],
        pinned_keys: PinnedKeys,
        departed_memory_s: float,
        record_ttl_s: float = RECORD_TTL_S,
    ) -> None:
        self._own_id = own_identity.node_id
        self._own_key = own_identity.public_key
        entries = [parse_whitelist_entry(entry) for entry in whitelist]
        self._whitelist = frozenset(node_id for node_id, _ in entries)
        self.pinned_keys = pinned_keys
        pinned_keys.pin_fixed(self._own_id, self._own_key)
        for node_id, key in entries:
            if key is not None:
                pinned_keys.pin_fixed(node_id, key)
        self._departed_memory_s = departed_memory_s
        self._record_ttl_s = record_ttl_s
        # When each record was last gossiped to us, and who told us about the ones not yet connected.
        self._refreshed: dict[NodeId, float] = {}
        self._introduced_by: dict[NodeId, NodeId] = {}
        self._pending_per_sender: Counter[NodeId] = Counter()
        self._records: dict[NodeId, SignedRecord] = {}
        self._connected: set[NodeId] = set()
        self._last_heard: dict[NodeId, float] = {}
        self._departed: dict[NodeId, tuple[int, float]] = {}

    def allows(self, node_id: NodeId) -> bool:
        """``whitelist_node_ids``: empty allows everyone; this node always allows itself."""
        return not self._whitelist or node_id in self._whitelist or node_id == self._own_id

    def consider(self, signed: SignedRecord, now: float, sender: NodeId | None = None) -> RecordVerdict:
        """Verify a gossiped record (told us by ``sender``) and store it if it is news.

        A record never pins its key (anyone can sign a record for any id); only
        a handshake does. While no key is pinned, the first key held wins.
        """
        record = signed.record
        if not self.allows(record.node_id):
            return "not_whitelisted"
        if not record_signature_is_valid(signed):
            return "bad_signature"
        if self.pinned_keys.conflicts(record.node_id, record.public_key):
            return "key_conflict"
        if record.node_id == self._own_id:
            return "self"
        held = self._records.get(record.node_id)
        if held is not None and held.record.public_key != record.public_key:
            return "key_conflict"
        departed = self._departed.get(record.node_id)
        if departed is not None:
            departed_version, departed_at = departed
            if record.version <= departed_version and now - departed_at < self._departed_memory_s:
                return "departed"
            del self._departed[record.node_id]
        if held is not None and held.record.version >= record.version:
            self._refreshed[record.node_id] = now
            return "unchanged"
        if held is None and not self._has_room_for(record.node_id, sender):
            return "full"
        self._records[record.node_id] = signed
        self._refreshed[record.node_id] = now
        if held is None and sender is not None and record.node_id not in self._connected:
            self._introduced_by[record.node_id] = sender
            self._pending_per_sender[sender] += 1
        return "accepted"

    def _has_room_for(self, node_id: NodeId, sender: NodeId | None) -> bool:
        if len(self._records) >= MAX_KNOWN_RECORDS:
            return False
        connected = node_id in self._connected
        return connected or sender is None or self._pending_per_sender[sender] < MAX_PENDING_PER_SENDER

    def _forget_introduction(self, node_id: NodeId) -> None:
        sender = self._introduced_by.pop(node_id, None)
        if sender is not None:
            self._pending_per_sender[sender] -= 1
            if self._pending_per_sender[sender] <= 0:
                del self._pending_per_sender[sender]

    def key_pinned(self, node_id: NodeId, public_key: bytes) -> None:
        """A handshake proved ``public_key`` for ``node_id``: a record signed by another key goes."""
        held = self._records.get(node_id)
        if held is not None and held.record.public_key != public_key:
            del self._records[node_id]
            self._refreshed.pop(node_id, None)
            self._forget_introduction(node_id)

    def expire(self, now: float) -> list[NodeId]:
        """Forget records of unconnected nodes that nobody gossiped for the record TTL."""
        expired = [
            node_id
            for node_id, refreshed in self._refreshed.items()
            if node_id not in self._connected and now - refreshed > self._record_ttl_s
        ]
        for node_id in expired:
            self._records.pop(node_id, None)
            del self._refreshed[node_id]
            self._forget_introduction(node_id)
        return expired

    def forget_departure(self, node_id: NodeId) -> None:
        """The node just proved it is alive again (a fresh authenticated session)."""
        self._departed.pop(node_id, None)

    def mark_connected(self, node_id: NodeId, now: float) -> None:
        self._connected.add(node_id)
        self._forget_introduction(node_id)
        self._last_heard[node_id] = now

    def mark_heard(self, node_id: NodeId, now: float) -> None:
        if node_id in self._connected:
            self._last_heard[node_id] = now

    def is_connected(self, node_id: NodeId) -> bool:
        return node_id in self._connected

    def is_live(self, node_id: NodeId) -> bool:
        return node_id in self._connected and node_id in self._records

    def record_of(self, node_id: NodeId) -> SignedRecord | None:
        return self._records.get(node_id)

    def silent_peers(self, now: float, timeout_s: float) -> list[NodeId]:
        """Connected peers that have not been heard from for ``timeout_s``."""
        return [
            node_id for node_id in self._connected if now - self._last_heard.get(node_id, now) > timeout_s
        ]

    def drop(self, node_id: NodeId, now: float) -> bool:
        """Forget a peer; its current record version is ignored for a while. True if it was live."""
        was_live = self.is_live(node_id)
        held = self._records.pop(node_id, None)
        self._refreshed.pop(node_id, None)
        self._forget_introduction(node_id)
        self._connected.discard(node_id)
        self._last_heard.pop(node_id, None)
        if held is not None:
            self._departed[node_id] = (held.record.version, now)
        return was_live

    def live_records(self) -> dict[NodeId, SignedRecord]:
        return {node_id: signed for node_id, signed in self._records.items() if node_id in self._connected}

    def known_records(self) -> list[SignedRecord]:
        """Every verified record held, live or not yet connected (what gossip spreads)."""
        return list(self._records.values())
