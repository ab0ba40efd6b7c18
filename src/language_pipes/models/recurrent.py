"""Linear-attention layers (Qwen3.5's gated delta net): a recurrent state per sequence, next to the KV cache.

A linear-attention layer carries two tensors from one step to the next: the
last few inputs of its causal convolution and the recurrent matrix state. They
are a sequence's state like its keys and values, so they live in the same
place: the :class:`~language_pipes.models.kv_cache.LayerCache` of that layer,
on the node that hosts it, freed with the sequence.

Unlike keys and values, a recurrent state cannot be cut back to an earlier
position. Truncating to 0 (a replay from the start) restarts it; truncating to
where it already is changes nothing; any other truncation marks it lost, and
the next step that continues it raises ``UnknownSequenceError`` so the origin
replays the sequence from position 0.

Such a layer mixes tokens in order, so a packed step is split: each sequence's
tokens run through the layer on their own, with their own state.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional


class RecurrentState:
    """The conv window and recurrent state of one linear-attention layer for one sequence."""

    def __init__(self) -> None:
        self.conv: torch.Tensor | None = None
        self.recurrent: torch.Tensor | None = None
        self.lost = False  # cut back to a position it cannot return to: the sequence must replay

    def truncate(self, length: int, current: int) -> None:
        if length == 0:
            self.conv = self.recurrent = None
            self.lost = False
        elif length < current:
            self.conv = self.recurrent = None
            self.lost = True

    def nbytes(self) -> int:
        return sum(t.nbytes for t in (self.conv, self.recurrent) if t is not None)


class _StateView:
    """The few ``Cache`` methods transformers' gated delta net calls, over one :class:`RecurrentState`."""

    def __init__(self, state: RecurrentState) -> None:
        self.state = state

    def get_conv_state(self, layer_idx: int, state_idx: int = 0) -> torch.Tensor | None:
        return self.state.conv

    def get_recurrent_state(self, layer_idx: int, state_idx: int = 0) -> torch.Tensor | None:
        return self.state.recurrent

    def is_recording_past(self, layer_idx: int) -> bool:
        return False

    def update_conv_state(
        self, conv_states: torch.Tensor, layer_idx: int, conv_kernel_size: int = 4, **kwargs: object
    ) -> torch.Tensor:
        """The kept window (zeros at the start) then the new inputs; keeps the last ``conv_kernel_size``."""
        if self.state.conv is None:
            full = conv_states
            if full.shape[-1] < conv_kernel_size:
                full = functional.pad(full, (conv_kernel_size - full.shape[-1], 0), value=0)
        else:
            full = torch.cat([self.state.conv, conv_states], dim=-1)
        self.state.conv = full[..., -conv_kernel_size:].clone()
        return full

    def update_recurrent_state(
        self, recurrent_states: torch.Tensor, layer_idx: int, **kwargs: object
    ) -> None:
        self.state.recurrent = recurrent_states


def run_sequences_apart(layer: nn.Module, layer_index: int) -> None:
    """Make ``layer`` (a linear-attention decoder layer) run each packed sequence alone, with its state."""
    forward: Callable[..., torch.Tensor] = layer.forward

    @functools.wraps(forward)
    def call(hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        from language_pipes.models.attention import PackedLayout
        from language_pipes.models.segment import UnknownSequenceError

        layout = kwargs.pop("packed_layout", None)
        if not isinstance(layout, PackedLayout):
            raise RuntimeError("a linear-attention layer needs packed_layout= in the layer call")
        for name in ("position_embeddings", "position_ids"):
            kwargs.pop(name, None)  # only attention layers use them; the state carries the order
        layer_caches = [cache.layers[layer_index] for cache in layout.caches]
        if any(layer_cache.recurrent_state().lost for layer_cache in layer_caches):
            # Checked before any state moves, so the other sequences of the step stay consistent.
            raise UnknownSequenceError("a linear-attention state was cut back; replay from the start")
        outputs = []
        start = 0
        for layer_cache, length in zip(layer_caches, layout.lengths, strict=True):
            state = layer_cache.recurrent_state()
            piece = hidden_states[:, start : start + length]
            outputs.append(forward(piece, None, cache=_StateView(state), **kwargs))
            layer_cache.length += length
            start += length
        return torch.cat(outputs, dim=1)

    layer.forward = call  # type: ignore[method-assign]
