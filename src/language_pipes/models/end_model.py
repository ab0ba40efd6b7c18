"""The end model: the only part of a model that sees text or token ids.

It holds the tokenizer and chat template, the embedding, the first
``num_local_layers`` decoder layers, the final norm and the output head, and
optionally the last ``num_local_last_layers`` decoder layers: then the hidden
states nearest the output (one norm and the public head away from the
generated tokens) never leave this node, and layer nodes run only the layers
in between (``shared_layers``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase

from language_pipes.models.invariance import linear_rows_independent, make_batch_invariant
from language_pipes.models.partial import ModelSource
from language_pipes.models.quantization import WeightFormat
from language_pipes.models.segment import LayerSegment, SegmentBatch
from language_pipes.vocabulary import SequenceId

# Tokenizers loaded ahead by preload_tokenizer, each handed to the next EndModel of its folder once.
_PRELOADED_TOKENIZERS: dict[Path, PreTrainedTokenizerBase] = {}


def preload_tokenizer(folder: Path) -> None:
    """Load ``folder``'s tokenizer now, for the next :class:`EndModel` of that folder to take.

    Parsing a large vocabulary's ``tokenizer.json`` holds the GIL for seconds (Gemma 3's 262k
    tokens: ~3 s on this CPU), long enough for peers to count the node as lost. A node calls this
    before its peer network starts, while no heartbeat can be missed.
    """
    _PRELOADED_TOKENIZERS[Path(folder).resolve()] = AutoTokenizer.from_pretrained(folder)


class EndModel:
    """Tokenizer, embedding, local layers, norm and head of one model on one device."""

    def __init__(
        self,
        model_id: str,
        folder: Path,
        *,
        num_local_layers: int = 1,
        num_local_last_layers: int = 0,
        dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str = "cpu",
        source: ModelSource | None = None,
        batch_invariant: bool = False,
        weights: WeightFormat | None = None,
    ) -> None:
        """``weights``: an int8 / int4 format quantizes the local layers and the head (not the embedding)."""
        self.model_id = model_id
        self.device = torch.device(device)
        self.dtype = dtype
        source = source or ModelSource.open(folder)
        self.source = source
        self.config = source.config
        self.num_layers = source.num_layers
        self.tokenizer: PreTrainedTokenizerBase = _PRELOADED_TOKENIZERS.pop(
            Path(folder).resolve(), None
        ) or AutoTokenizer.from_pretrained(folder)
        self.embedding = source.load_module("model.embed_tokens", dtype, self.device)
        self.norm = source.load_module("model.norm", dtype, self.device)
        self.weights = weights
        quantized_source = source.with_weights(weights)
        self.head = quantized_source.load_head(dtype, self.device)
        local = min(num_local_layers, self.num_layers)
        if num_local_last_layers < 0 or local + num_local_last_layers > self.num_layers:
            raise ValueError(
                f"num_local_layers ({local}) + num_local_last_layers ({num_local_last_layers}) "
                f"exceed the {self.num_layers} layers of {model_id}"
            )
        self.local_layers = LayerSegment(quantized_source, 0, local, dtype, self.device, batch_invariant)
        # Layers the network runs between the local first and last layers: [start, stop).
        self.shared_layers = range(local, self.num_layers - num_local_last_layers)
        self.last_layers: LayerSegment | None = None
        if num_local_last_layers:
            self.last_layers = LayerSegment(
                quantized_source,
                self.shared_layers.stop,
                self.num_layers,
                dtype,
                self.device,
                batch_invariant,
            )
        self.batch_invariant = batch_invariant
        if batch_invariant:
            make_batch_invariant(self.head)
        # Whether a decode run's rows need the head one at a time to equal plain decode steps.
        self.head_rows_apart = not batch_invariant and not linear_rows_independent(dtype, self.device.type)
        self.eos_token_ids = _eos_token_ids(folder, self.tokenizer)
        self.context_length = int(getattr(self.config, "max_position_embeddings", 0) or 4096)

    def finish_hidden(self, hidden: torch.Tensor, batch: SegmentBatch) -> torch.Tensor:
        """Run the local last layers (if any) on the route's output: the final hidden states."""
        if self.last_layers is None:
            return hidden
        return self.last_layers.forward(hidden, batch)

    def release(self, sequence_id: SequenceId) -> None:
        """Free the sequence's caches in the local first and last layers."""
        self.local_layers.release(sequence_id)
        if self.last_layers is not None:
            self.last_layers.release(sequence_id)

    def embed(self, token_ids: list[int]) -> torch.Tensor:
        """``[1, len(token_ids), hidden]`` hidden states for a packed step."""
        ids = torch.tensor([token_ids], dtype=torch.long, device=self.device)
        with torch.inference_mode():
            return self.embedding(ids)

    def logits(self, hidden: torch.Tensor, decode_rows: bool = False) -> torch.Tensor:
        """Float32 logits ``[rows, vocab]`` for the given final-layer hidden rows ``[rows, hidden]``.

        ``decode_rows``: the rows stand for separate decode steps (a verified
        draft), so each must get what a one-row head call gives it.
        """
        with torch.inference_mode():
            hidden = hidden.to(device=self.device, dtype=self.dtype)
            normed = self.norm(hidden)
            if decode_rows and self.head_rows_apart:
                logits = torch.cat(
                    [self.head(normed[row : row + 1]) for row in range(normed.shape[0])]
                ).float()
            else:
                logits = self.head(normed).float()
            return self.source.family.finish_logits(self.config, logits)

    def encode_chat(self, messages: list[dict[str, object]]) -> list[int]:
        rendered = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(self.tokenizer.encode(rendered, add_special_tokens=False))


def _eos_token_ids(folder: Path, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    ids: set[int] = set()
    try:
        configured = GenerationConfig.from_pretrained(folder).eos_token_id
    except OSError:  # no generation_config.json: the tokenizer's EOS is all we know
        configured = None
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)
