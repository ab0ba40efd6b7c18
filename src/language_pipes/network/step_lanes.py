"""How PeerNetwork offers step lanes (:mod:`language_pipes.network.lanes`) to its callers.

The lane server answers on its own thread; each calling thread gets its own
lane clients. A peer without a usable lane gets its steps over the peer
network instead (the caller sees None from :meth:`StepLanesMixin.lane_request`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import zmq

from language_pipes.network.lanes import LaneClients, LaneHandler, LaneRefused, LaneServer
from language_pipes.network.session import Session
from language_pipes.network.types import NodeId, PeerLostError

if TYPE_CHECKING:
    from language_pipes.network.peer_network import PeerNetwork

logger = logging.getLogger("language_pipes.network.peer_network")


class StepLanesMixin:
    """Step lanes beside the peer network (a part of PeerNetwork)."""

    def register_lane_handler(self: PeerNetwork, kind: str, handler: LaneHandler) -> None:
        """Answer lane requests of ``kind`` with ``handler(sender, header, payload) -> reply payload``.

        Handlers run one at a time on the lane thread, not on the event loop.
        """
        self._lane_handlers[kind] = handler
        if self._lane_server is not None:
            self._lane_server.register(kind, handler)

    def lane_request(
        self: PeerNetwork,
        node_id: NodeId,
        kind: str,
        header: bytes,
        payload: bytes | memoryview,
        timeout: float,
    ) -> bytes | None:
        """Send a request over this thread's lane to ``node_id`` and block until the reply payload.

        Call it from a thread other than the event loop. Returns None when the
        peer offers no usable lane: send the message with :meth:`request` then.
        Raises like :meth:`request` otherwise.
        """
        if self._lane_clients is None:
            return None
        session = self._session_to(node_id)
        signed = self._membership.record_of(node_id)
        if signed is None or signed.record.lane_port is None:
            return None
        client = self._lane_clients.for_peer(session, signed.record.address, signed.record.lane_port)
        if client is None:
            return None
        try:
            return client.request(kind, header, payload, timeout, lambda: self._lane_peer_problem(node_id))
        except LaneRefused as error:
            logger.info("%s; sending over the peer network", error)
            self._lane_clients.discard(node_id)
            return None
        except PeerLostError:
            self._lane_clients.discard(node_id)
            raise

    def _start_lanes(self: PeerNetwork, port: int) -> None:
        self._lane_context = zmq.Context()
        self._lane_server = LaneServer(
            self._lane_context,
            self._listen_host,
            port,
            self._inbound_session,
            guard=self._guard,
            max_message_bytes=self._max_message_bytes,
        )
        for kind, handler in self._lane_handlers.items():
            self._lane_server.register(kind, handler)
        self._lane_server.start()
        self._lane_clients = LaneClients(self._lane_context, self._max_message_bytes)
        logger.info("step lanes on %s:%d", self._listen_host, self._lane_server.port)

    def _inbound_session(self: PeerNetwork, lane_tag: bytes) -> Session | None:
        """The open inbound session named by ``lane_tag`` (read from the lane thread)."""
        for state in list(self._inbound.values()):
            session = state.session
            if session is not None and session.lane_tag == lane_tag:
                return session if self._membership.allows(session.peer_id) else None
        return None

    def _lane_peer_problem(self: PeerNetwork, node_id: NodeId) -> str | None:
        if not self._running:
            return "the network was stopped"
        return None if self._membership.is_live(node_id) else "it stopped answering"
