"""Attention over a packed batch of sequences, each with its own KV cache.

A step's hidden states are packed as ``[1, total_tokens, hidden]``: the new
tokens of every sequence one after another (varlen layout). transformers'
attention modules compute queries, keys and values (rotary, q/k norms and all)
and then call the attention function registered as ``language_pipes``, which
splits the pack per sequence, appends to that sequence's cache and runs SDPA.
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
    outputs = []
    start = 0
    for cache, length in zip(layout.caches, layout.lengths, strict=True):
        end = start + length
        layer_cache = cache.layers[module.layer_idx]
        past = layer_cache.length
        keys, values = layer_cache.append(key[:, :, start:end], value[:, :, start:end])
        mask = _mask(length, past, window, query.device)
        if softcap is not None:
            output = _softcapped_attention(
                module, query[:, :, start:end], keys, values, mask, scaling, softcap
            )
        else:
            output, _ = sdpa_attention_forward(
                module, query[:, :, start:end], keys, values, mask, dropout=0.0, scaling=scaling
            )
        outputs.append(output)
        start = end
    return torch.cat(outputs, dim=1), None


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
