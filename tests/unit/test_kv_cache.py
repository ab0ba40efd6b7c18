"""Per-sequence KV cache: growth by doubling keeps the history; truncation rewinds it."""

from __future__ import annotations

import pytest
import torch

from language_pipes.models.kv_cache import CacheFullError, LayerCache, SequenceCache


def step(length: int, start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys/values ``[1, 2 heads, length, 4]`` whose values encode their position."""
    positions = torch.arange(start, start + length, dtype=torch.float32)
    keys = positions.view(1, 1, length, 1).expand(1, 2, length, 4).clone()
    return keys, -keys


def test_append_returns_the_whole_history_in_order() -> None:
    cache = LayerCache()
    keys, values = cache.append(*step(5, 0))
    assert keys.shape == (1, 2, 5, 4)
    keys, values = cache.append(*step(1, 5))
    assert cache.length == 6
    assert keys[0, 0, :, 0].tolist() == [0, 1, 2, 3, 4, 5]
    assert torch.equal(values, -keys)


def test_growth_keeps_every_token_and_doubles_capacity() -> None:
    cache = LayerCache()
    cache.append(*step(10, 0))
    first_capacity = cache.nbytes()
    assert first_capacity == 2 * 64 * 2 * 4 * 4  # keys + values, 64 slots minimum
    position = 10
    while position < 200:
        keys, _ = cache.append(*step(1, position))
        position += 1
    assert keys[0, 1, :, 3].tolist() == list(range(200))
    assert cache.nbytes() == first_capacity * 4  # 64 -> 128 -> 256 slots
    keys, _ = cache.append(*step(300, 200))  # a chunk bigger than double the capacity
    assert keys.shape[2] == 500
    assert keys[0, 0, :, 0].tolist() == list(range(500))


def test_decode_appends_in_place_without_reallocating() -> None:
    cache = LayerCache()
    first, _ = cache.append(*step(3, 0))
    second, _ = cache.append(*step(1, 3))
    assert first.data_ptr() == second.data_ptr()


def test_truncate_rewinds_and_new_tokens_overwrite() -> None:
    cache = LayerCache()
    cache.append(*step(8, 0))
    cache.truncate(5)
    assert cache.length == 5
    replacement = torch.full((1, 2, 2, 4), 99.0)
    keys, values = cache.append(replacement, -replacement)
    assert keys[0, 0, :, 0].tolist() == [0, 1, 2, 3, 4, 99, 99]
    cache.truncate(50)  # never extends
    assert cache.length == 7


def test_sequence_cache_spans_the_hosted_layers() -> None:
    cache = SequenceCache(range(3, 6))
    assert sorted(cache.layers) == [3, 4, 5]
    assert cache.length == 0 and cache.nbytes() == 0
    for layer in cache.layers.values():
        layer.append(*step(4, 0))
    assert cache.length == 4
    cache.truncate(2)
    assert all(layer.length == 2 for layer in cache.layers.values())
    assert cache.nbytes() == 3 * 2 * 64 * 2 * 4 * 4
    assert SequenceCache(range(0, 0)).length == 0


def test_a_reserved_cache_never_allocates_past_its_length_and_refuses_to_outgrow_it() -> None:
    cache = LayerCache(max_length=100)
    cache.append(*step(70, 0))
    cache.append(*step(30, 70))  # doubling would allocate 140 slots; the reservation caps it at 100
    assert cache.nbytes() == 2 * (1 * 2 * 100 * 4) * 4
    with pytest.raises(CacheFullError):
        cache.append(*step(1, 100))
    cache.truncate(0)
    keys, _ = cache.append(*step(5, 0))  # a replay from the start fits again
    assert keys.shape[2] == 5
    assert SequenceCache(range(2), max_length=8).layers[1].max_length == 8
