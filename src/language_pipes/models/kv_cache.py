"""Per-sequence key/value storage for the layers a node hosts.

Each live sequence owns one :class:`SequenceCache` on every node that runs
some of its layers. Buffers grow by doubling, so a decode step appends in
place instead of copying the whole history; a cache with a ``max_length``
(the tokens its node reserved memory for) never grows beyond it.
"""

from __future__ import annotations

import torch

from language_pipes.models.recurrent import RecurrentState


class CacheFullError(ValueError):
    """A sequence outgrew the length its cache was reserved for."""


class LayerCache:
    """Keys and values of one layer for one sequence: ``[1, kv_heads, length, head_dim]`` views."""

    def __init__(self, max_length: int | None = None) -> None:
        self._keys: torch.Tensor | None = None
        self._values: torch.Tensor | None = None
        self.length = 0
        self.max_length = max_length
        # Linear-attention layers keep a recurrent state instead of keys and values (models/recurrent.py).
        self._recurrent: RecurrentState | None = None

    def recurrent_state(self) -> RecurrentState:
        if self._recurrent is None:
            self._recurrent = RecurrentState()
        return self._recurrent

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        new = keys.shape[2]
        needed = self.length + new
        if self.max_length is not None and needed > self.max_length:
            raise CacheFullError(f"{needed} tokens exceed the {self.max_length} this cache was reserved for")
        if self._keys is None or needed > self._keys.shape[2]:
            self._grow(keys, values, needed)
        assert self._keys is not None and self._values is not None
        self._keys[:, :, self.length : needed] = keys
        self._values[:, :, self.length : needed] = values
        self.length = needed
        return self._keys[:, :, :needed], self._values[:, :, :needed]

    def _grow(self, keys: torch.Tensor, values: torch.Tensor, needed: int) -> None:
        capacity = max(64, needed, 2 * (self._keys.shape[2] if self._keys is not None else 0))
        if self.max_length is not None:
            capacity = max(needed, min(capacity, self.max_length))
        shape = (keys.shape[0], keys.shape[1], capacity, keys.shape[3])
        grown_keys = keys.new_empty(shape)
        grown_values = values.new_empty((*shape[:3], values.shape[3]))
        if self._keys is not None and self._values is not None:
            grown_keys[:, :, : self.length] = self._keys[:, :, : self.length]
            grown_values[:, :, : self.length] = self._values[:, :, : self.length]
        self._keys, self._values = grown_keys, grown_values

    def truncate(self, length: int) -> None:
        if self._recurrent is not None:
            self._recurrent.truncate(length, self.length)
        self.length = min(self.length, length)

    def nbytes(self) -> int:
        recurrent = self._recurrent.nbytes() if self._recurrent is not None else 0
        if self._keys is None or self._values is None:
            return recurrent
        return self._keys.nbytes + self._values.nbytes + recurrent


class SequenceCache:
    """The caches of every hosted layer for one sequence, keyed by absolute layer index."""

    def __init__(self, layer_indices: range, max_length: int | None = None) -> None:
        self.layers = {index: LayerCache(max_length) for index in layer_indices}

    @property
    def length(self) -> int:
        return next(iter(self.layers.values())).length if self.layers else 0

    def truncate(self, length: int) -> None:
        for layer in self.layers.values():
            layer.truncate(length)

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers.values())
