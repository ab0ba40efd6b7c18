"""Gossip: spreading signed node records, and acting on the ones peers send.

Every record a peer sends is validated on its own (a bad one is skipped and
counted, the rest still count), stored within the bounds of
:mod:`language_pipes.network.limits` (records in total, unconnected records
per sender) and expires when nobody gossips it again. Dialling the address a
new record names is rate-limited, so one message cannot make this node open
hundreds of sockets.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from language_pipes.network.connections import (
    KIND_GOSSIP,
    OutboundConnection,
    RetrySchedule,
    send_if_possible,
)
from language_pipes.network.limits import MAX_GOSSIP_JSON_BYTES, MAX_RECORDS_PER_GOSSIP
from language_pipes.network.membership import SignedRecord
from language_pipes.network.types import NodeId, NodeRecord
from language_pipes.network.wire import MalformedFrame, loads_bounded

if TYPE_CHECKING:
    from language_pipes.network.peer_network import PeerNetwork


class GossipMixin:
    """Record exchange between peers (a part of PeerNetwork)."""

    def _gossip_payload(self: PeerNetwork) -> bytes:
        records = list(self._membership.live_records().values())
        if self._own_record is not None:
            records.append(self._own_record)
        return json.dumps([signed.to_wire() for signed in records], separators=(",", ":")).encode()

    def _on_gossip(self: PeerNetwork, sender: NodeId, payload: bytes) -> None:
        entries = loads_bounded(payload, MAX_GOSSIP_JSON_BYTES)
        if not isinstance(entries, list) or len(entries) > MAX_RECORDS_PER_GOSSIP:
            raise MalformedFrame(f"gossip must be a list of at most {MAX_RECORDS_PER_GOSSIP} records")
        now = time.monotonic()
        changed = False
        for entry in entries:
            try:
                signed = SignedRecord.from_wire(entry)
            except (ValueError, TypeError) as error:
                # One record we cannot use (bad field, out of range): skip it, keep the others.
                self._guard.dropped("gossip record", f"node {sender!r}", error)
                continue
            changed |= self._consider_record(sender, signed, now)
        if changed:
            self._notify_records_changed()

    def _consider_record(self: PeerNetwork, sender: NodeId, signed: SignedRecord, now: float) -> bool:
        """Store one gossiped record; True if a live peer's record changed."""
        node_id = signed.record.node_id
        was_live = self._membership.is_live(node_id)
        verdict = self._membership.consider(signed, now, sender)
        if verdict == "key_conflict":
            self._guard.log.warning(
                "gossip-key",
                "ignored a record for node %r (via %r): signed by another key than the one held",
                node_id,
                sender,
            )
        elif verdict == "bad_signature":
            self._guard.log.warning(
                "gossip-signature", "ignored a record for node %r (via %r): bad signature", node_id, sender
            )
        elif verdict == "full":
            self._guard.log.warning(
                "gossip-full",
                "ignored a record for node %r (via %r): too many unconnected records",
                node_id,
                sender,
            )
        elif verdict == "accepted":
            if self._membership.is_connected(node_id):
                self._maybe_joined(node_id, already_live=was_live)
                return True
            self._connect_to_record(signed.record, now)
        return False

    def _maybe_joined(self: PeerNetwork, node_id: NodeId, already_live: bool) -> None:
        if not already_live and self._membership.is_live(node_id):
            self._log.info("node %r joined", node_id)
            self._notify(self._local.observers_joined, node_id)

    def _push_gossip(self: PeerNetwork, connection: OutboundConnection) -> None:
        if connection.session is None:
            return
        # The peer's queue is full or it is gone: the next round (or failure detection) follows.
        send_if_possible(connection, KIND_GOSSIP, "oneway", self._gossip_payload())

    def _connect_to_record(self: PeerNetwork, record: NodeRecord, now: float) -> None:
        schedule = self._record_retries.get(record.node_id)
        if (record.address, record.port) in self._outbound or (schedule and now < schedule.next_attempt):
            return
        if not self._connect_budget.take(now):
            return  # over the dialling rate: the record stays, a later gossip round dials it
        schedule = self._record_retries.setdefault(record.node_id, RetrySchedule())
        if not self._open_connection(record.address, record.port, record.node_id):
            schedule.failed(now)

    def _dial_known_records(self: PeerNetwork, now: float) -> None:
        """Dial records we hold but reach no peer for (skipped by the dialling rate, or failed before)."""
        for signed in self._membership.known_records():
            if not self._membership.is_connected(signed.record.node_id):
                self._connect_to_record(signed.record, now)

    def _expire_records(self: PeerNetwork, now: float) -> None:
        """Records of unconnected nodes nobody gossips any more go, with their retry schedules."""
        for node_id in self._membership.expire(now):
            self._record_retries.pop(node_id, None)
        for node_id in [node for node in self._record_retries if self._membership.record_of(node) is None]:
            if not self._membership.is_connected(node_id):
                del self._record_retries[node_id]
