"""The one place that picks how a message reaches a peer: its step lane or the peer network.

:class:`PeerLink` is what a thread other than the event loop (a scheduler
lane) uses to talk to one peer. :meth:`PeerLink.exchange` sends a request over
the calling thread's own step lane when the peer offers a usable one (no
event-loop handoff, see network/lanes.py) and over the peer network otherwise,
blocking on the network's event loop. :meth:`PeerLink.request` always takes the
peer network (messages with a JSON header, such as opening a sequence), and
:meth:`PeerLink.post` hands a one-way message to it without waiting. Callers
never choose a transport themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from language_pipes.network.connections import Header
from language_pipes.network.types import NodeId

if TYPE_CHECKING:
    from language_pipes.network.peer_network import PeerNetwork

T = TypeVar("T")

# Extra time the blocking caller waits beyond a request's own timeout, so the
# network's timeout (which names the peer and the kind) is the one that fires.
_HANDOFF_SLACK_S = 1.0


class PeerLink:
    """Blocking request/reply with one peer, from any thread but the network's event loop."""

    def __init__(self, network: PeerNetwork, loop: asyncio.AbstractEventLoop, node_id: NodeId) -> None:
        self.network = network
        self.loop = loop
        self.node_id = node_id

    def is_live(self) -> bool:
        return self.network.is_live(self.node_id)

    def exchange(self, kind: str, header: bytes, payload: bytes | memoryview, timeout: float) -> bytes:
        """Send a binary-header request and return the reply payload: lane if offered, else peer message.

        Raises PeerRequestTimeout after ``timeout`` seconds without a reply,
        PeerLostError / PeerUnavailableError when the peer is gone and
        PeerRequestFailed when its handler failed.
        """
        reply = self.network.lane_request(self.node_id, kind, header, payload, timeout)
        if reply is not None:
            return reply
        _, reply = self.request(kind, header, payload, timeout)
        return reply

    def request(
        self, kind: str, header: Header, payload: bytes | memoryview, timeout: float
    ) -> tuple[Header, bytes]:
        """A request over the peer network (any header), blocking until the reply."""
        return self._wait(self.network.request(self.node_id, kind, header, payload, timeout), timeout)

    def post(self, kind: str, header: Header, payload: bytes | memoryview) -> None:
        """Hand a one-way message to the peer network and return at once (fire and forget)."""
        asyncio.run_coroutine_threadsafe(self.network.send(self.node_id, kind, header, payload), self.loop)

    def _wait(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout + _HANDOFF_SLACK_S)
