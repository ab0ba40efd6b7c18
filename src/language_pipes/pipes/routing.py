"""Choosing a route: which node runs which layers of a model for a new sequence.

Pure functions over the plain segment list gossiped by the network, so they
are tested without one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Offer:
    """A node that has layers ``[start, end)`` of a model loaded, and how busy it is."""

    node_id: str
    start: int
    end: int
    load: int = 0


@dataclass(frozen=True)
class Hop:
    """Run layers ``[start, end)`` on ``node_id``."""

    node_id: str
    start: int
    end: int


def plan_route(
    first_layer: int, last_layer: int, offers: Iterable[Offer], local_node: str
) -> tuple[Hop, ...] | None:
    """A chain of hops covering ``[first_layer, last_layer)``, or None when the layers are not all covered.

    At each position the hop prefers this node (no network), then the least
    loaded node, then the one that reaches furthest. Any offer that contains
    the position moves coverage forward, so the greedy choice never misses a
    route that exists.
    """
    offers = list(offers)
    hops: list[Hop] = []
    position = first_layer
    while position < last_layer:
        containing = [o for o in offers if o.start <= position < o.end]
        if not containing:
            return None
        best = min(containing, key=lambda o: (o.node_id != local_node, o.load, -o.end))
        end = min(best.end, last_layer)
        if hops and hops[-1].node_id == best.node_id and hops[-1].end == position:
            hops[-1] = Hop(best.node_id, hops[-1].start, end)
        else:
            hops.append(Hop(best.node_id, position, end))
        position = end
    return tuple(hops)
