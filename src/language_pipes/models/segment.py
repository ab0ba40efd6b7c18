"""A layer segment: a contiguous run of decoder layers and the KV caches of its sequences.

This is where a layer is run. The same class serves the layers an end model
keeps locally and the layers a layer-model node hosts for others; the network
only adds a transport in front of :meth:`LayerSegment.forward`.

With a KV budget (a layer node's segments), :meth:`LayerSegment.open`
reserves a sequence's KV memory for its maximum length up front and refuses
what the budget cannot cover; steps then stay within that length and the
model's context, so the caches never grow past the budget.

A decode run (a sequence's last token and its drafts: speculative
verification, marked in :class:`SegmentBatch`) must compute each row as a
one-row decode step would. Attention sees to that row by row
(models/attention.py); where the linear layers' kernels round one
row differently from several (:func:`linear_rows_independent`), the segment
also runs such a step as consecutive one-row steps.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import torch
from torch import nn

from language_pipes.models.attention import PackedLayout
from language_pipes.models.fusion import fuse_projections
from language_pipes.models.heap import loading_heap
from language_pipes.models.invariance import linear_rows_independent, make_batch_invariant
from language_pipes.models.kv_cache import SequenceCache
from language_pipes.models.partial import ModelSource
from language_pipes.vocabulary import SequenceId

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentBatch:
    """The sequences in one packed step: new tokens of each, starting at ``start_positions``."""

    sequence_ids: tuple[SequenceId, ...]
    start_positions: tuple[int, ...]
    lengths: tuple[int, ...]
    # Per sequence: its rows are a decode run, i.e. its last token and the drafts speculation
    # verifies after it, each to be computed as the one-row decode step it stands for (a prefill
    # chunk computes its rows together). Empty: no sequence's rows are.
    decode_runs: tuple[bool, ...] = ()

    def decode_run(self, index: int) -> bool:
        return bool(self.decode_runs) and self.decode_runs[index]

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


class StepOutOfBoundsError(ValueError):
    """A step's rows do not fit: bad lengths, positions past the reserved length or the context."""


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
        with loading_heap():  # the copies made while loading leave RSS when freed
            self.layers = nn.ModuleList(
                [source.load_module(f"model.layers.{i}", dtype, device) for i in range(start, end)]
            )
            if not batch_invariant:  # batch-invariant mode pads single rows per nn.Linear: no fusing
                for layer in self.layers:
                    fuse_projections(layer)
        self.batch_invariant = batch_invariant
        if batch_invariant:
            make_batch_invariant(self.layers)
        self.rotary = source.rotary(device)
        # Default mode on kernels that round a lone row differently: decode runs go one row at a time.
        self.split_decode_runs = not batch_invariant and not linear_rows_independent(dtype, device.type)
        self._caches: dict[SequenceId, SequenceCache] = {}
        self._last_used: dict[SequenceId, float] = {}
        # Tokens each opened sequence may hold here (its KV memory is reserved for them at open).
        self._reserved: dict[SequenceId, int] = {}
        self._lock = threading.Lock()
        # Bytes the KV caches may take, all reservations together (None: no limit, no open needed).
        self.kv_budget_bytes: int | None = None
        self.kv_bytes_per_token = source.kv_bytes_per_token(dtype) * (end - start)
        # The weights' format as records announce it: int8 / int4, else the float dtype's name.
        float_name = str(dtype).removeprefix("torch.")
        self.data_type = source.weights.name if source.weights is not None else float_name
        self.context_length = int(getattr(source.config, "max_position_embeddings", 0) or 4096)

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
        self._check_batch(hidden, batch)
        if self.split_decode_runs and any(batch.decode_runs):
            return self._forward_row_by_row(hidden, batch, start, end)
        return self._forward(hidden, batch, start, end)

    def _forward_row_by_row(
        self, hidden: torch.Tensor, batch: SegmentBatch, start: int, end: int
    ) -> torch.Tensor:
        """The step as consecutive sub-steps, a decode run's rows one per sub-step, in order.

        The first sub-step carries every other sequence whole and each decode
        run's first row; sub-step ``j`` carries row ``j`` of the runs that long.
        """
        offsets = [sum(batch.lengths[:i]) for i in range(len(batch.lengths))]
        runs = [batch.decode_run(i) for i in range(len(batch.lengths))]
        output = torch.empty_like(hidden, device=self.device, dtype=self.dtype)
        for row in range(max(n for n, run in zip(batch.lengths, runs, strict=True) if run)):
            members = [
                i
                for i, (n, run) in enumerate(zip(batch.lengths, runs, strict=True))
                if (run and row < n) or row == 0
            ]
            spans = [(offsets[i] + row, 1) if runs[i] else (offsets[i], batch.lengths[i]) for i in members]
            sub_batch = SegmentBatch(
                sequence_ids=tuple(batch.sequence_ids[i] for i in members),
                start_positions=tuple(batch.start_positions[i] + (row if runs[i] else 0) for i in members),
                lengths=tuple(length for _, length in spans),
            )
            rows = torch.cat([torch.arange(first, first + length) for first, length in spans])
            output[:, rows] = self._forward(hidden[:, rows], sub_batch, start, end)
        return output

    def _forward(self, hidden: torch.Tensor, batch: SegmentBatch, start: int, end: int) -> torch.Tensor:
        caches = tuple(
            self._cache_for(sid, pos, length, start)
            for sid, pos, length in zip(batch.sequence_ids, batch.start_positions, batch.lengths, strict=True)
        )
        hidden = hidden.to(device=self.device, dtype=self.dtype)
        position_ids = batch.position_ids(self.device)
        layout = PackedLayout(
            caches=caches,
            lengths=batch.lengths,
            batch_invariant=self.batch_invariant,
            decode_runs=batch.decode_runs,
        )
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

    def open(self, sequence_id: SequenceId, max_tokens: int | None = None) -> None:
        """Reserve KV memory for a sequence of up to ``max_tokens`` (default: the context) tokens.

        Raises KVBudgetExceededError when the reservations would exceed the budget.
        Opening an open sequence again re-reserves it for the new length.
        """
        tokens = self.context_length if max_tokens is None else max_tokens
        if not 1 <= tokens <= self.context_length:
            raise StepOutOfBoundsError(f"a sequence holds 1 to {self.context_length} tokens, not {tokens}")
        with self._lock:
            if self.kv_budget_bytes is not None:
                others = sum(n for sid, n in self._reserved.items() if sid != sequence_id)
                reserved = others * self.kv_bytes_per_token
                needed = tokens * self.kv_bytes_per_token
                if reserved + needed > self.kv_budget_bytes:
                    raise KVBudgetExceededError(
                        f"the KV cache of layers {self.start}-{self.end - 1} is full "
                        f"({reserved / 2**20:.0f} of {self.kv_budget_bytes / 2**20:.0f} MiB reserved, "
                        f"{needed / 2**20:.1f} MiB more needed)"
                    )
            self._reserved[sequence_id] = tokens
            self._last_used[sequence_id] = time.monotonic()
            cache = self._caches.get(sequence_id)
            if cache is not None and cache.length > tokens:
                cache.truncate(tokens)
            if cache is not None:
                for layer in cache.layers.values():
                    layer.max_length = tokens

    def _check_batch(self, hidden: torch.Tensor, batch: SegmentBatch) -> None:
        """Refuse a malformed step before any cache changes."""
        if not batch.sequence_ids:
            raise StepOutOfBoundsError("a step needs at least one sequence")
        if len(set(batch.sequence_ids)) != len(batch.sequence_ids):
            raise StepOutOfBoundsError("a step lists a sequence twice")
        if batch.decode_runs and len(batch.decode_runs) != len(batch.sequence_ids):
            raise StepOutOfBoundsError("a step marks decode runs for some of its sequences only")
        if any(length < 1 for length in batch.lengths):
            raise StepOutOfBoundsError("every sequence in a step needs at least one token")
        if hidden.dim() != 3 or hidden.shape[1] != batch.total_tokens:
            raise StepOutOfBoundsError(
                f"the step has {batch.total_tokens} tokens but hidden states of shape {tuple(hidden.shape)}"
            )
        for sequence_id, position, length in zip(
            batch.sequence_ids, batch.start_positions, batch.lengths, strict=True
        ):
            limit = self._reserved.get(sequence_id, self.context_length)
            if position + length > limit:
                raise StepOutOfBoundsError(
                    f"sequence {sequence_id} would reach {position + length} tokens; it may hold {limit}"
                )

    def _cache_for(
        self, sequence_id: SequenceId, start_position: int, length: int, first_layer: int
    ) -> SequenceCache:
        with self._lock:
            limit = self._reserved.get(sequence_id)
            if limit is None and self.kv_budget_bytes is not None:
                raise UnknownSequenceError(sequence_id)  # budgeted segments only run opened sequences
            if start_position + length > (limit or self.context_length):
                raise StepOutOfBoundsError(f"sequence {sequence_id} outgrew its reserved length")
            self._last_used[sequence_id] = time.monotonic()
            cache = self._caches.get(sequence_id)
            if cache is None:
                if start_position != 0:
                    raise UnknownSequenceError(sequence_id)
                cache = self._caches[sequence_id] = SequenceCache(self.layer_range, limit)
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
            self._reserved.pop(sequence_id, None)

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

    def holds(self, sequence_id: SequenceId) -> bool:
        """Whether ``sequence_id`` is open here (reserved by ``open``, with or without a cache yet)."""
        with self._lock:
            return sequence_id in self._reserved or sequence_id in self._caches

    def reserved_tokens(self) -> int:
        """Tokens of KV memory reserved by open sequences, all together."""
        with self._lock:
            return sum(self._reserved.values())

    def cache_nbytes(self) -> int:
        with self._lock:
            return sum(cache.nbytes() for cache in self._caches.values())
