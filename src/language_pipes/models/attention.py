"""Attention over a packed batch of sequences, each with its own KV cache.

A step's hidden states are packed as ``[1, total_tokens, hidden]``: the new
tokens of every sequence one after another (varlen layout). transformers'
attention modules compute queries, keys and values (rotary, q/k norms and all)
and then call the attention function registered as ``language_pipes``, which
splits the pack per sequence, appends to that sequence's cache and runs SDPA.

A decode run (a sequence's last token and the drafts speculation verifies
after it, marked as such in the step) attends row by row, because SDPA over several query rows rounds
differently from one-row decode steps in bf16 (seen on AVX2): verified tokens
are then exactly what plain decoding would have computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from language_pipes.models.kv_cache import SequenceCache

ATTENTION_NAME = "language_pipes"


@dataclass(frozen=True)
class PackedLayout:
    """Where each sequence's new tokens sit in the pack, and the cache they extend."""

    caches: tuple[SequenceCache, ...]
    lengths: tuple[int, ...]
    # Batch-invariant mode (models/invariance.py): each sequence attends on its own, as when alone.
    batch_invariant: bool = False
    # Per sequence: its rows are a decode run (SegmentBatch.decode_runs); empty means none is.
    decode_runs: tuple[bool, ...] = ()

    def row_by_row(self, index: int) -> bool:
        """Whether sequence ``index`` attends one query row at a time."""
        return self.batch_invariant or (bool(self.decode_runs) and self.decode_runs[index])


def _mask(query_length: int, past: int, window: int | None, device: torch.device) -> torch.Tensor | None:
    """Bool mask [q, past + q] (True = may attend), or None when plain causal attention is exact."""
    total = past + query_length
    needs_window = window is not None and total > window
    if past == 0 and not needs_window:
        return None
    if query_length == 1 and not needs_window:
        return None
    query_positions = torch.arange(past, total, device=device).unsqueeze(1)
    key_positions = torch.arange(total, device=device).unsqueeze(0)
    allowed = key_positions <= query_positions
    if needs_window:
        allowed &= key_positions > query_positions - window
    return allowed[None, None]


def packed_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    layout = kwargs.get("packed_layout")
    if not isinstance(layout, PackedLayout):
        raise RuntimeError("packed_attention needs packed_layout= in the layer call")
    window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
    softcap = kwargs.get("softcap")
    starts = [sum(layout.lengths[:i]) for i in range(len(layout.lengths))]
    outputs: list[torch.Tensor | None] = [None] * len(layout.lengths)
    decoding = [i for i, length in enumerate(layout.lengths) if length == 1]
    if len(decoding) > 1 and softcap is None and not layout.batch_invariant:
        # Several one-token steps: one batched SDPA over their padded caches instead of one call each.
        batched = _batched_decode(module, query, key, value, layout, decoding, starts, window, scaling)
        for row, index in enumerate(decoding):
            outputs[index] = batched[row : row + 1]
    for index, (cache, length) in enumerate(zip(layout.caches, layout.lengths, strict=True)):
        if outputs[index] is not None:
            continue
        start, end = starts[index], starts[index] + length
        layer_cache = cache.layers[module.layer_idx]
        past = layer_cache.length
        keys, values = layer_cache.append(key[:, :, start:end], value[:, :, start:end])
        if layout.row_by_row(index):
            outputs[index] = _row_by_row_attention(
                module, query[:, :, start:end], keys, values, past, window, scaling, softcap
            )
            continue
        if window is not None and length == 1 and keys.shape[2] > window:
            # A lone decode row sees only the last `window` keys: attend over exactly those, as
            # transformers' sliding cache does, instead of the whole history under a mask
            # (another key count rounds differently in bf16).
            keys, values, past = keys[:, :, -window:], values[:, :, -window:], window - 1
        mask = _mask(length, past, window, query.device)
        if softcap is not None:
            output = _softcapped_attention(
                module, query[:, :, start:end], keys, values, mask, scaling, softcap
            )
        else:
            output, _ = sdpa_attention_forward(
                module, query[:, :, start:end], keys, values, mask, dropout=0.0, scaling=scaling
            )
        outputs[index] = output
    return torch.cat(outputs, dim=1), None  # type: ignore[arg-type]


def _row_by_row_attention(
    module: nn.Module,
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    past: int,
    window: int | None,
    scaling: float | None,
    softcap: float | None,
) -> torch.Tensor:
    """Each query row attends exactly as a lone one-token decode step at its position would.

    Attention kernels may round a row differently depending on how many query rows
    share the call (seen with bf16 SDPA on AVX2-only CPUs: a prefill chunk and the
    decode steps it replays differ in the last bits). One call per row, over exactly
    the keys that row may see and with no mask, is the same call whether the row
    arrives in a prefill chunk, a replay or a decode step.
    """
    rows = []
    for offset in range(query.shape[2]):
        end = past + offset + 1
        begin = max(0, end - window) if window else 0
        row = query[:, :, offset : offset + 1]
        row_keys, row_values = keys[:, :, begin:end], values[:, :, begin:end]
        if softcap is not None:
            rows.append(_softcapped_attention(module, row, row_keys, row_values, None, scaling, softcap))
        else:
            output, _ = sdpa_attention_forward(
                module, row, row_keys, row_values, None, dropout=0.0, scaling=scaling
            )
            rows.append(output)
    return torch.cat(rows, dim=1)


def _batched_decode(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layout: PackedLayout,
    rows: list[int],
    starts: list[int],
    window: int | None,
    scaling: float | None,
) -> torch.Tensor:
    """Attention of one new token for each of ``rows``; returns ``[len(rows), 1, heads, head_dim]``."""
    histories = []
    for index in rows:
        layer_cache = layout.caches[index].layers[module.layer_idx]
        position = starts[index]
        histories.append(
            layer_cache.append(key[:, :, position : position + 1], value[:, :, position : position + 1])
        )
    longest = max(keys.shape[2] for keys, _ in histories)
    count, kv_heads, head_dim = len(rows), key.shape[1], key.shape[3]
    padded_keys = key.new_zeros(count, kv_heads, longest, head_dim)
    padded_values = value.new_zeros(count, kv_heads, longest, value.shape[3])
    allowed = torch.zeros(count, 1, 1, longest, dtype=torch.bool, device=query.device)
    for row, (keys, values) in enumerate(histories):
        length = keys.shape[2]
        padded_keys[row, :, :length] = keys[0]
        padded_values[row, :, :length] = values[0]
        allowed[row, ..., max(0, length - window) if window else 0 : length] = True
    heads = query.shape[1]
    # Grouped-query attention without repeating keys: each KV head's query heads become its query rows.
    queries = query[0, :, [starts[index] for index in rows]].transpose(0, 1)  # [rows, heads, head_dim]
    queries = queries.reshape(count, kv_heads, heads // kv_heads, head_dim)
    output = torch.nn.functional.scaled_dot_product_attention(
        queries, padded_keys, padded_values, attn_mask=allowed, scale=scaling
    )
    return output.reshape(count, heads, 1, -1).transpose(1, 2)


def _softcapped_attention(
    module: nn.Module,
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float | None,
    softcap: float,
) -> torch.Tensor:
    """Eager attention with logit soft-capping (SDPA cannot cap logits)."""
    groups = query.shape[1] // keys.shape[1]
    keys = keys.repeat_interleave(groups, dim=1)
    values = values.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, keys.transpose(2, 3)) * (scaling or query.shape[-1] ** -0.5)
    scores = torch.tanh(scores / softcap) * softcap
    if mask is None:
        past = keys.shape[2] - query.shape[2]
        mask = torch.ones(query.shape[2], keys.shape[2], dtype=torch.bool, device=query.device).tril(past)[
            None, None
        ]
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores.float(), dim=-1).to(query.dtype)
    return torch.matmul(weights, values).transpose(1, 2).contiguous()


AttentionInterface.register(ATTENTION_NAME, packed_attention)
