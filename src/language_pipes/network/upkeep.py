"""Upkeep of the membership: heartbeats, failure detection, bootstrap retries, record expiry.

One loop (:meth:`UpkeepMixin._maintain`, supervised like the receive loops)
runs every heartbeat interval; :meth:`UpkeepMixin._drop_peer` is where a peer
leaves this node's view, whatever the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from typing import TYPE_CHECKING

from language_pipes.network.connections import KIND_PING, OutboundConnection, send_if_possible
from language_pipes.network.guard import supervise
from language_pipes.network.types import NodeId, PeerLostError

if TYPE_CHECKING:
    from language_pipes.network.peer_network import PeerNetwork

logger = logging.getLogger("language_pipes.network.peer_network")


class UpkeepMixin:
    """Liveness of peers (a part of PeerNetwork)."""

    def _drop_peer(self: PeerNetwork, node_id: NodeId, reason: str) -> None:
        was_live = self._membership.drop(node_id, time.monotonic())
        connection = self._peer_connections.pop(node_id, None)
        if connection is not None:
            self._close_connection(connection)
        for routing_id, state in list(self._inbound.items()):
            if state.session is not None and state.session.peer_id == node_id:
                del self._inbound[routing_id]
        for pending_node, future in self._pending.values():
            if pending_node == node_id and not future.done():
                future.set_exception(PeerLostError(f"node {node_id!r} was lost: {reason}"))
        if was_live:
            logger.warning("lost node %r: %s", node_id, reason)
            self._notify(self._local.observers_lost, node_id)
            self._notify_records_changed()

    async def _supervised_maintain(self: PeerNetwork) -> None:
        await supervise("the upkeep loop", self._maintain, self._guard, lambda: self._running)

    async def _maintain(self: PeerNetwork) -> None:
        """Heartbeats, failure detection, bootstrap retries, record expiry and gossip, every interval."""
        gossip_every = max(1, round(1.0 / self._heartbeat_interval_s))
        for tick in itertools.count():
            now = time.monotonic()
            # Checked once per tick, so a peer silent for (timeout - tick) is dropped by the timeout.
            silence_limit = self.failure_timeout_s - self._heartbeat_interval_s
            for node_id in self._membership.silent_peers(now, silence_limit):
                self._drop_peer(node_id, f"no answer for {self.failure_timeout_s:g} s")
            self._retry_bootstrap(now)
            self._expire_records(now)
            if tick % gossip_every == 0:
                self._dial_known_records(now)
            for connection in list(self._peer_connections.values()):
                self._send_heartbeat(connection)
            if tick % gossip_every == 0 or self._gossip_now.is_set():
                self._gossip_now.clear()
                for connection in list(self._peer_connections.values()):
                    self._push_gossip(connection)
            with contextlib.suppress(TimeoutError):
                # Timing out is the normal way to the next tick; the event only makes gossip come sooner.
                await asyncio.wait_for(self._gossip_now.wait(), self._heartbeat_interval_s)

    def _send_heartbeat(self: PeerNetwork, connection: OutboundConnection) -> None:
        if connection.session is None:
            return
        # No connected pipe (peer down) or queue full: the missing answer is what failure detection sees.
        send_if_possible(connection, KIND_PING, "request", b"")

    def _retry_bootstrap(self: PeerNetwork, now: float) -> None:
        for (address, port), schedule in self._bootstrap.items():
            if (address, port) in self._outbound or now < schedule.next_attempt:
                continue
            if schedule.resolved_id is not None and self._membership.is_connected(schedule.resolved_id):
                continue
            schedule.next_attempt = now + 1.0
            self._open_connection(address, port, None)
