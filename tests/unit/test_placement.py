"""Placement: which layers a layer model hosts, from plain data (no network, no model)."""

from __future__ import annotations

import pytest

from language_pipes.pipes.placement import (
    KV_HEADROOM_TOKENS,
    LayerSpan,
    choose_span,
    first_gap,
    layers_that_fit,
)

LAYERS = 30


def test_first_gap_of_an_empty_network_is_everything_after_the_end_model() -> None:
    assert first_gap(LAYERS, 1, []) == LayerSpan(1, 30)


def test_first_gap_between_and_after_spans() -> None:
    assert first_gap(LAYERS, 1, [LayerSpan(1, 10), LayerSpan(15, 30)]) == LayerSpan(10, 15)
    assert first_gap(LAYERS, 1, [LayerSpan(1, 10)]) == LayerSpan(10, 30)
    assert first_gap(LAYERS, 1, [LayerSpan(5, 30)]) == LayerSpan(1, 5)


def test_first_gap_ignores_order_overlaps_and_spans_before_the_start() -> None:
    spans = [LayerSpan(20, 30), LayerSpan(0, 4), LayerSpan(1, 8), LayerSpan(6, 12)]
    assert first_gap(LAYERS, 1, spans) == LayerSpan(12, 20)


def test_no_gap_when_a_pipe_is_complete() -> None:
    assert first_gap(LAYERS, 1, [LayerSpan(1, 12), LayerSpan(12, 30)]) is None


def test_choose_span_fills_the_first_gap_up_to_capacity() -> None:
    covered = [LayerSpan(1, 10), LayerSpan(20, 30)]
    assert choose_span(LAYERS, 1, covered, capacity_layers=100) == LayerSpan(10, 20)
    assert choose_span(LAYERS, 1, covered, capacity_layers=4) == LayerSpan(10, 14)


def test_choose_span_takes_as_many_layers_as_fit_from_the_first_layer() -> None:
    assert choose_span(LAYERS, 1, [], capacity_layers=12) == LayerSpan(1, 13)
    assert choose_span(LAYERS, 0, [], capacity_layers=100) == LayerSpan(0, 30)


def test_choose_span_starts_a_new_pipe_when_every_layer_is_covered() -> None:
    assert choose_span(LAYERS, 1, [LayerSpan(1, 30)], capacity_layers=10) == LayerSpan(1, 11)


def test_choose_span_hosts_nothing_without_capacity_or_layers() -> None:
    assert choose_span(LAYERS, 1, [], capacity_layers=0) is None
    assert choose_span(LAYERS, 30, [], capacity_layers=5) is None


def test_layers_that_fit_counts_weights_and_kv_headroom() -> None:
    layer_bytes, kv_per_token = 1_000_000, 10
    per_layer = layer_bytes + kv_per_token * KV_HEADROOM_TOKENS
    assert layers_that_fit(per_layer * 7, layer_bytes, kv_per_token) == 7
    assert layers_that_fit(per_layer * 7 - 1, layer_bytes, kv_per_token) == 6
    assert layers_that_fit(per_layer - 1, layer_bytes, kv_per_token) == 0
    assert layers_that_fit(0, layer_bytes, kv_per_token) == 0


@pytest.mark.parametrize("capacity", [1, 3, 7, 29])
def test_nodes_joining_one_after_another_complete_pipes(capacity: int) -> None:
    """Layer nodes of equal capacity join in turn; together they cover every layer, no overlap."""
    covered: list[LayerSpan] = []
    while first_gap(LAYERS, 1, covered) is not None:
        span = choose_span(LAYERS, 1, covered, capacity)
        assert span is not None and len(span) <= capacity
        assert all(span.end <= other.start or span.start >= other.end for other in covered)
        covered.append(span)
    assert sum(len(span) for span in covered) == LAYERS - 1
    # The next node starts a second pipe.
    assert choose_span(LAYERS, 1, covered, capacity) == LayerSpan(1, min(LAYERS, 1 + capacity))
