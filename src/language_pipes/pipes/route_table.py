"""The routes an origin sends its sequences through: planned from gossip records, cached explicitly.

:func:`plan_hops` is pure: the network's records and this node's own segments
in, a chain of hops (or None) out; nothing is built or kept, so ``/v1/models``
and the TUI can ask whether a model has a pipe without side effects.
:class:`RouteTable` is the cache: :meth:`RouteTable.route` builds a
:class:`~language_pipes.pipes.route.Route` for planned hops the first time a
sequence needs it, and the table retires routes whose segments the network no
longer offers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from language_pipes.network.types import NodeId, NodeRecord
from language_pipes.pipes.route import Route, SegmentRunner
from language_pipes.pipes.routing import Hop, Offer, plan_route
from language_pipes.vocabulary import ModelId

RouteKey = tuple[ModelId, tuple[Hop, ...]]


def plan_hops(
    model_id: ModelId,
    records: Mapping[NodeId, NodeRecord],
    own_node: NodeId,
    first_layer: int,
    last_layer: int,
    own_spans: Iterable[tuple[int, int]],
    open_by_node: Mapping[str, int],
) -> tuple[Hop, ...] | None:
    """Hops over ``[first_layer, last_layer)`` from loaded segments, or None when a layer is missing.

    ``open_by_node`` adds the sequences this origin already has open on each
    node to its gossiped load, which lags by a second.
    """
    offers = [
        Offer(
            record.node_id,
            segment.start_layer,
            segment.end_layer,
            record.load + open_by_node.get(record.node_id, 0),
        )
        for record in records.values()
        if record.node_id != own_node
        for segment in record.segments
        if segment.model_id == model_id and segment.loaded and not segment.private
    ]
    offers += [Offer(own_node, start, end, 0) for start, end in own_spans]
    return plan_route(first_layer, last_layer, offers, own_node)


def describe_hops(hops: tuple[Hop, ...]) -> str:
    return " -> ".join(f"{hop.node_id}[{hop.start}:{hop.end}]" for hop in hops)


def _offers(record: NodeRecord | None, model_id: str, hop: Hop) -> bool:
    return record is not None and any(
        s.model_id == model_id
        and s.loaded
        and not s.private
        and s.start_layer <= hop.start
        and hop.end <= s.end_layer
        for s in record.segments
    )


class RouteTable:
    """The built routes of one origin node, keyed by model and hops."""

    def __init__(self, own_node: NodeId) -> None:
        self.own_node = own_node
        self._routes: dict[RouteKey, Route] = {}

    def __len__(self) -> int:
        return len(self._routes)

    def open_by_node(self) -> Counter[str]:
        """Sequences this origin has open on each node right now."""
        load: Counter[str] = Counter()
        for (_, hops), route in list(self._routes.items()):
            for hop in hops:
                load[hop.node_id] += route.open_sequences
        return load

    def route(
        self, model_id: ModelId, hops: tuple[Hop, ...], runner: Callable[[Hop], SegmentRunner]
    ) -> Route:
        """The route for planned ``hops``, built (one runner per hop) the first time it is asked for."""
        route = self._routes.get((model_id, hops))
        if route is None:
            route = Route([runner(hop) for hop in hops], name=describe_hops(hops))
            self._routes[(model_id, hops)] = route
        return route

    def retire_stale(self, records: Mapping[NodeId, NodeRecord]) -> None:
        """Routes through segments the network no longer offers stop taking steps; their sequences move."""
        for key, route in list(self._routes.items()):
            model_id, hops = key
            remote = [hop for hop in hops if hop.node_id != self.own_node]
            if not all(_offers(records.get(NodeId(hop.node_id)), model_id, hop) for hop in remote):
                self._retire(key, route)

    def retire_own_hops(self, model_id: ModelId) -> None:
        """Retire this model's routes through this node's own segments (they are being unloaded)."""
        for key, route in list(self._routes.items()):
            if key[0] == model_id and any(hop.node_id == self.own_node for hop in key[1]):
                self._retire(key, route)

    def _retire(self, key: RouteKey, route: Route) -> None:
        route.retired = True
        del self._routes[key]
