"""Models for tests: tiny random models of every supported family, the default model, a split-model harness.

``build_tiny_model(family, folder)`` writes a complete model folder (config,
safetensors weights in the checkpoint layout transformers saves, a word-level
tokenizer) for a ~64-wide, 4-layer model of one family, seeded so that every
call builds the same weights. ``default_model_folder`` finds the real default
model (SmolLM2-135M-Instruct) for the tests that need real text.
``open_split`` loads a folder as an end model plus the layer segments that
complete its pipe, all in this process, and runs packed steps through them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    DynamicCache,
    Gemma3TextConfig,
    Gemma4TextConfig,
    LlamaConfig,
    Ministral3Config,
    MinistralConfig,
    MistralConfig,
    Phi3Config,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen3_5TextConfig,
    Qwen3Config,
    Qwen3MoeConfig,
)

from language_pipes.models.end_model import EndModel
from language_pipes.models.partial import ModelSource
from language_pipes.models.segment import LayerSegment, SegmentBatch
from language_pipes.vocabulary import SequenceId

TinyFamily = Literal[
    "llama",
    "qwen3",
    "qwen3_moe",
    "gemma3",
    "phi3",
    "ministral3",
    "ministral",
    "mistral",
    "gemma4_text",
    "qwen3_5_text",
]
TINY_FAMILIES: tuple[TinyFamily, ...] = ("llama", "qwen3", "qwen3_moe", "gemma3", "phi3")
# The families added for the upstream release's architectures (tests/unit/test_architectures_upstream.py).
UPSTREAM_TINY_FAMILIES: tuple[TinyFamily, ...] = (
    "ministral3",
    "ministral",
    "mistral",
    "gemma4_text",
    "qwen3_5_text",
)

VOCAB_SIZE = 160
# Gemma 3's sliding layers look back this many tokens; the tests run longer sequences than this.
GEMMA_SLIDING_WINDOW = 6

_COMMON: dict[str, object] = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "initializer_range": 0.15,  # wider than the default so logits are far from uniform
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "tie_word_embeddings": False,
}


def _llama() -> PretrainedConfig:
    return LlamaConfig(**_COMMON)


def _qwen3() -> PretrainedConfig:
    return Qwen3Config(**_COMMON, head_dim=16)


def _qwen3_moe() -> PretrainedConfig:
    return Qwen3MoeConfig(
        **_COMMON,
        head_dim=16,
        moe_intermediate_size=32,
        num_experts=4,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        decoder_sparse_step=1,
    )


def _gemma3() -> PretrainedConfig:
    common = {**_COMMON, "tie_word_embeddings": True}  # Gemma ties its head to the embedding
    return Gemma3TextConfig(
        **common,
        head_dim=16,
        sliding_window=GEMMA_SLIDING_WINDOW,
        # Two sliding layers, then a full one, then sliding again: every segment split mixes types.
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        query_pre_attn_scalar=16,
        final_logit_softcapping=5.0,  # small enough that the cap really bends these logits
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
        },
    )


def _phi3() -> PretrainedConfig:
    return Phi3Config(**{**_COMMON, "pad_token_id": 0})


# Ministral 3's query scaling grows past this many positions (llama_4_scaling_beta): the tests go past it.
MINISTRAL3_ORIGINAL_CONTEXT = 8


def _ministral3() -> PretrainedConfig:
    """Ministral 3 as released (YaRN rotary, position-scaled queries, no sliding window), shrunk."""
    return Ministral3Config(
        **_COMMON,
        head_dim=16,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 1_000_000.0,
            "factor": 16.0,
            "original_max_position_embeddings": MINISTRAL3_ORIGINAL_CONTEXT,
            "max_position_embeddings": 512,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "mscale_all_dim": 1.0,
            "mscale": 1.0,
            "llama_4_scaling_beta": 0.1,
        },
    )


def _ministral() -> PretrainedConfig:
    """Ministral (8B 2410): sliding and full attention layers interleaved."""
    layer_types = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"]
    return MinistralConfig(
        **_COMMON, head_dim=16, sliding_window=GEMMA_SLIDING_WINDOW, layer_types=layer_types
    )


def _mistral() -> PretrainedConfig:
    """Mistral: one sliding window in every layer."""
    return MistralConfig(**_COMMON, head_dim=16, sliding_window=GEMMA_SLIDING_WINDOW)


def _gemma4_text() -> PretrainedConfig:
    """Gemma 4 text without per-layer embeddings or KV sharing (refused, see models/architectures.py).

    Full-attention layers have their own head size and key/value heads, share keys as values
    (``attention_k_eq_v``) and rotate only part of each head (``proportional`` rotary).
    """
    return Gemma4TextConfig(
        # Untied head: with the tied one, this tiny model's residual stream only echoes the last token.
        **_COMMON,
        head_dim=16,
        global_head_dim=32,
        num_global_key_value_heads=1,
        attention_k_eq_v=True,
        sliding_window=GEMMA_SLIDING_WINDOW,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        hidden_size_per_layer_input=0,
        num_kv_shared_layers=0,
        final_logit_softcapping=5.0,
    )


def _qwen3_5_text() -> PretrainedConfig:
    """Qwen3.5: linear attention (gated delta net) in layers 0, 1 and 3, full attention in layer 2."""
    return Qwen3_5TextConfig(
        **_COMMON,
        head_dim=16,
        layer_types=["linear_attention", "linear_attention", "full_attention", "linear_attention"],
        linear_conv_kernel_dim=4,
        linear_key_head_dim=8,
        linear_value_head_dim=8,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
    )


_CONFIGS: dict[TinyFamily, Callable[[], PretrainedConfig]] = {
    "llama": _llama,
    "qwen3": _qwen3,
    "qwen3_moe": _qwen3_moe,
    "gemma3": _gemma3,
    "phi3": _phi3,
    "ministral3": _ministral3,
    "ministral": _ministral,
    "mistral": _mistral,
    "gemma4_text": _gemma4_text,
    "qwen3_5_text": _qwen3_5_text,
}


def tiny_config(family: TinyFamily) -> PretrainedConfig:
    return _CONFIGS[family]()


def build_tiny_model(family: TinyFamily, folder: Path, seed: int = 0) -> Path:
    """Write a tiny random float32 model of ``family`` with a tokenizer into ``folder``; returns it."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family), dtype=torch.float32)
    _randomise_norms(model)
    model.save_pretrained(folder)
    _tiny_tokenizer().save_pretrained(folder)
    return folder


def _randomise_norms(model: torch.nn.Module) -> None:
    """Norm weights start as constants; random ones catch a norm loaded into the wrong place."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name and parameter.dim() == 1:
                parameter.add_(torch.randn_like(parameter) * 0.1)


def _tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the tiny vocabulary: token ``i`` is the word ``w{i}``."""
    specials = {"<pad>": 0, "<s>": 1, "</s>": 2}
    vocab = {**specials, **{f"w{i}": i for i in range(len(specials), VOCAB_SIZE)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<pad>"
    )


DEFAULT_MODEL_ENV = "LP_TEST_DEFAULT_MODEL_FOLDER"


def default_model_folder(store_root: Path) -> Path:
    """The default model's folder: ``$LP_TEST_DEFAULT_MODEL_FOLDER`` if set, else prepared in the store.

    Preparing converts the embedded GGUF once per store (about 20 s); point the
    variable at an already converted folder to skip that between runs.
    """
    configured = os.environ.get(DEFAULT_MODEL_ENV)
    if configured:
        return Path(configured)
    from language_pipes.models.default_model import prepare_default_model

    return prepare_default_model(store_root)


@dataclass
class SplitModel:
    """An end model plus the segments that complete its pipe, all in this process."""

    end: EndModel
    segments: list[LayerSegment]

    def step(self, sequence_ids: list[str], starts: list[int], chunks: list[list[int]]) -> torch.Tensor:
        """One packed step; returns float32 logits for every fed token, ``[tokens, vocab]``."""
        batch = SegmentBatch(
            sequence_ids=tuple(SequenceId(s) for s in sequence_ids),
            start_positions=tuple(starts),
            lengths=tuple(len(chunk) for chunk in chunks),
        )
        hidden = self.end.embed([token for chunk in chunks for token in chunk])
        hidden = self.end.local_layers.forward(hidden, batch)
        for segment in self.segments:
            hidden = segment.forward(hidden, batch)
        return self.end.logits(hidden[0])

    def greedy(self, sequence_id: str, prompt: list[int], new_tokens: int, chunk: int = 0) -> list[int]:
        """Greedy decoding of one sequence; the prompt is fed whole, or in chunks of ``chunk`` tokens."""
        chunk = chunk or len(prompt)
        position = 0
        logits = torch.empty(0)
        while position < len(prompt):
            piece = prompt[position : position + chunk]
            logits = self.step([sequence_id], [position], [piece])
            position += len(piece)
        tokens = [int(logits[-1].argmax())]
        while len(tokens) < new_tokens:
            logits = self.step([sequence_id], [position], [[tokens[-1]]])
            position += 1
            tokens.append(int(logits[-1].argmax()))
        return tokens

    def release(self, sequence_id: str) -> None:
        for segment in (self.end.local_layers, *self.segments):
            segment.release(SequenceId(sequence_id))


def open_split(
    folder: Path,
    boundaries: tuple[int, ...],
    dtype: torch.dtype,
    end: EndModel | None = None,
    batch_invariant: bool = False,
) -> SplitModel:
    """Layers ``[0, boundaries[0])`` in the end model, then one segment per following boundary.

    Passing ``end`` reuses an already loaded end model (its local layers must end at ``boundaries[0]``).
    """
    source = end.source if end is not None else ModelSource.open(folder)
    if end is None:
        end = EndModel(
            "test",
            folder,
            num_local_layers=boundaries[0],
            dtype=dtype,
            source=source,
            batch_invariant=batch_invariant,
        )
    assert end.local_layers.end == boundaries[0] and end.batch_invariant == batch_invariant
    segments = [
        LayerSegment(source, start, stop, dtype, torch.device("cpu"), batch_invariant)
        for start, stop in zip(boundaries, boundaries[1:], strict=False)
    ]
    return SplitModel(end, segments)


def reference_model(folder: Path) -> PreTrainedModel:
    """The folder's model in one process with transformers, float32, never stopping at EOS."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.generation_config.eos_token_id = None  # compare a fixed number of tokens, EOS or not
    model.generation_config.pad_token_id = 0
    return model.eval()


def reference_steps(model: PreTrainedModel, prompt: list[int], steps: int) -> Iterator[torch.Tensor]:
    """transformers with its own cache: the prefill logits, then one row per greedy decode step."""
    cache = DynamicCache(config=model.config)
    feed = torch.tensor([prompt])
    with torch.inference_mode():
        for _ in range(steps + 1):
            logits = model(feed, cache=cache, use_cache=True).logits[0].float()
            yield logits
            feed = logits[-1:].argmax(-1, keepdim=True)
