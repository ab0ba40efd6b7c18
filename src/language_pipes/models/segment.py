"""A layer segment: a contiguous run of decoder layers and the KV caches of its sequences.

This is where a layer is run. The same class serves the layers an end model
keeps locally and the layers a layer-model node hosts for others; the network
only adds a transport in front of :meth:`LayerSegment.forward`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import torch
from torch import nn

from language_pipes.engine.types import SequenceId
from language_pipes.models.attention import PackedLayout
from language_pipes.models.fusion import fuse_projections
from language_pipes.models.invariance import make_batch_invariant
from language_pipes.models.kv_cache import SequenceCache
from language_pipes.models.partial import ModelSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentBatch:
    """The sequences in one packed step: new tokens of each, starting at ``start_positions``."""

    sequence_ids: tuple[SequenceId, ...]
    start_positions: tuple[int, ...]
    lengths: tuple[int, ...]

    @property
    def total_tokens(self) -> int:
        return sum(self.lengths)

    def position_ids(self, device: torch.device) -> torch.Tensor:
        ranges = [torch.arange(s, s + n) for s, n in zip(self.start_positions, self.lengths, strict=True)]
        return torch.cat(ranges).unsqueeze(0).to(device)


class KVBudgetExceededError(RuntimeError):
    """The segment's KV caches use their whole memory budget; new sequences must wait or go elsewhere."""


class UnknownSequenceError(KeyError):
    """A step continues a sequence whose cache this segment does not hold (e.g. after a restart)."""


class LayerSegment:
    """Decoder layers ``[start, end)`` of one model, materialised on one device."""

    def __init__(
        self,
        source: ModelSource,
        start: int,
        end: int,
        dtype: torch.dtype,
        device: torch.device,
        batch_invariant: bool = False,
    ):
        self.model_id_config = source.config
        self.family = source.family
        self.start, self.end = start, end
        self.dtype, self.device = dtype, device
        self.layers = nn.ModuleList(
            [source.load_module(f"model.layers.{i}", dtype, device) for i in range(start, end)]
        )
        self.batch_invariant = batch_invariant
        if batch_invariant:
            make_batch_invariant(self.layers)
        else:  # batch-invariant mode pads single rows per nn.Linear, so it keeps them separate
            for layer in self.layers:
                fuse_projections(layer)
        self.rotary = source.rotary(device)
        self._caches: dict[SequenceId, SequenceCache] = {}
        self._last_used: dict[SequenceId, float] = {}
        self._lock = threading.Lock()
        # Bytes the KV caches may take before new sequences are refused (None: no limit).
        self.kv_budget_bytes: int | None = None

    @property
    def layer_range(self) -> range:
        return range(self.start, self.end)

    def forward(
        self, hidden: torch.Tensor, batch: SegmentBatch, start: int | None = None, end: int | None = None
    ) -> torch.Tensor:
        """Run hosted layers ``[start, end)`` (default: all) on a packed ``[1, tokens, hidden]`` step.

        Extends each sequence's cache in those layers.
        """
        start = self.start if start is None else start
        end = self.end if end is None else end
        if not self.start <= start <= end <= self.end:
            raise ValueError(f"layers {start}-{end} are outside this segment's {self.start}-{self.end}")
        if start == end:
            return hidden
        caches = tuple(
            self._cache_for(sid, pos, start)
            for sid, pos in zip(batch.sequence_ids, batch.start_positions, strict=True)
        )
        hidden = hidden.to(device=self.device, dtype=self.dtype)
        position_ids = batch.position_ids(self.device)
        layout = PackedLayout(caches=caches, lengths=batch.lengths, batch_invariant=self.batch_invariant)
        layers = self.layers[start - self.start : end - self.start]
        with torch.inference_mode():
            embeddings = self.family.position_embeddings(
                self.model_id_config, self.rotary, hidden, position_ids, range(start, end)
            )
            for layer, position_embeddings in zip(layers, embeddings, strict=True):
                output = layer(
                    hidden,
                    attention_mask=None,
                    position_ids=position_ids,
                    position_embeddings=position_embeddings,
                    packed_layout=layout,
                )
                hidden = output[0] if isinstance(output, tuple) else output
        return hidden

    def open(self, sequence_id: SequenceId) -> None:
        """Admit a new sequence unless the KV caches already fill their budget (caches grow on each step)."""
        if self.kv_budget_bytes is not None and sequence_id not in self._caches:
            used = self.cache_nbytes()
            if used >= self.kv_budget_bytes:
                raise KVBudgetExceededError(
                    f"the KV cache of layers {self.start}-{self.end - 1} is full "
                    f"({used / 2**20:.0f} of {self.kv_budget_bytes / 2**20:.0f} MiB)"
                )

    def _cache_for(self, sequence_id: SequenceId, start_position: int, first_layer: int) -> SequenceCache:
        with self._lock:
            self._last_used[sequence_id] = time.monotonic()
            cache = self._caches.get(sequence_id)
            if cache is None:
                if start_position != 0:
                    raise UnknownSequenceError(sequence_id)
                cache = self._caches[sequence_id] = SequenceCache(self.layer_range)
            length = cache.layers[first_layer].length
            if length > start_position:
                cache.truncate(start_position)  # a replayed or retried step overwrites what followed
            elif length < start_position:
                raise UnknownSequenceError(sequence_id)
            return cache

    def release(self, sequence_id: SequenceId) -> None:
        with self._lock:
            self._caches.pop(sequence_id, None)
            self._last_used.pop(sequence_id, None)

    def release_idle(self, idle_seconds: float) -> list[SequenceId]:
        """Backstop: free caches no step has touched for ``idle_seconds``."""
        cutoff = time.monotonic() - idle_seconds
        with self._lock:
            stale = [sid for sid, used in self._last_used.items() if used < cutoff]
        for sequence_id in stale:
            self.release(sequence_id)
        return stale

    @property
    def sequence_count(self) -> int:
        return len(self._caches)

    def cache_nbytes(self) -> int:
        with self._lock:
            return sum(cache.nbytes() for cache in self._caches.values())
