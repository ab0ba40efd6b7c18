"""Which layers a layer model should host: pure functions over plain data.

A layer model fills the first gap in the coverage the network already has for
its model (an incomplete pipe), or starts a new pipe when every layer is
covered, taking as many layers as its memory budget allows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from language_pipes.network.types import NodeId, NodeRecord

# A sequence's KV cache is budgeted for this many tokens per hosted layer (all sequences together).
KV_HEADROOM_TOKENS = 16_384


@dataclass(frozen=True)
class LayerSpan:
    start: int
    end: int

    def __len__(self) -> int:
        return self.end - self.start


def layers_that_fit(memory_bytes: float, layer_bytes: int, kv_bytes_per_token_per_layer: int) -> int:
    """How many decoder layers fit a memory budget, with KV headroom for each."""
    per_layer = layer_bytes + kv_bytes_per_token_per_layer * KV_HEADROOM_TOKENS
    return max(0, int(memory_bytes // per_layer))


def first_gap(num_layers: int, first_layer: int, covered: Iterable[LayerSpan]) -> LayerSpan | None:
    """The first run of layers in ``[first_layer, num_layers)`` that no span covers."""
    position = first_layer
    for span in sorted(covered, key=lambda s: s.start):
        if span.end <= position:
            continue
        if span.start > position:
            return LayerSpan(position, span.start)
        position = max(position, span.end)
    return LayerSpan(position, num_layers) if position < num_layers else None


def choose_span(
    num_layers: int, first_layer: int, covered: Iterable[LayerSpan], capacity_layers: int
) -> LayerSpan | None:
    """Layers to host: fill the first gap, else start a new pipe at ``first_layer``; None if nothing fits."""
    if capacity_layers <= 0 or first_layer >= num_layers:
        return None
    gap = first_gap(num_layers, first_layer, covered) or LayerSpan(first_layer, num_layers)
    return LayerSpan(gap.start, min(gap.end, gap.start + capacity_layers))


def covered_spans(records: Mapping[NodeId, NodeRecord], model_id: str) -> list[LayerSpan]:
    """Layers of ``model_id`` the network already hosts, private last layers of end models included."""
    return [
        LayerSpan(segment.start_layer, segment.end_layer)
        for record in records.values()
        for segment in record.segments
        if segment.model_id == model_id
    ]
