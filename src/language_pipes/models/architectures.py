"""Per-family adapters: the few places where model families differ for a split model.

Everything else (attention, MLP, norms, MoE routing) runs inside transformers'
own decoder-layer modules. An adapter only says how to compute the rotary
position embeddings a layer expects, how to map checkpoint tensors onto the
modules (when transformers fuses them at load time), how to fill the buffers a
checkpoint does not store (a module materialised from the meta device holds
garbage there), and how to finish logits.

Only the ``model_type`` values listed in ``_FAMILIES`` are served: any other one
is refused when the model is opened (:class:`UnsupportedArchitectureError`), since
running layers an adapter was never checked against can produce garbage.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig

from language_pipes.models.recurrent import run_sequences_apart

PositionEmbeddings = tuple[torch.Tensor, torch.Tensor]


class UnsupportedArchitectureError(ValueError):
    """A model folder whose ``model_type`` (or one of its features) no adapter here supports."""


@dataclass(frozen=True)
class Family:
    """Default behaviour, correct for Llama, Qwen3, Phi-3 and most decoder-only models."""

    name: str = "llama"

    def check(self, config: PretrainedConfig) -> None:
        """Raise :class:`UnsupportedArchitectureError` for a config feature this adapter cannot run split."""

    def prepare_module(self, path: str, module: nn.Module) -> None:
        """Adapt a freshly loaded module (e.g. a decoder layer) to how a split model calls it."""

    def position_embeddings(
        self,
        config: PretrainedConfig,
        rotary: nn.Module,
        hidden: torch.Tensor,
        position_ids: torch.Tensor,
        layer_indices: range,
    ) -> list[PositionEmbeddings]:
        """The (cos, sin) pair each hosted layer takes, computed locally from positions."""
        shared = rotary(hidden, position_ids)
        return [shared for _ in layer_indices]

    def convert_checkpoint(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map checkpoint tensor names/layouts onto the module's parameter names."""
        return tensors

    def fill_computed_buffers(self, module: nn.Module) -> None:
        """Set the non-persistent buffers of a freshly materialised module (not in any checkpoint).

        The default family knows none, so it refuses a module that has some rather
        than run with uninitialised memory.
        """
        _refuse_unfilled_buffers(self.name, module, filled=frozenset())

    def finish_logits(self, config: PretrainedConfig, logits: torch.Tensor) -> torch.Tensor:
        softcap = getattr(config, "final_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits


@dataclass(frozen=True)
class PerLayerTypeRotaryFamily(Family):
    """Gemma 3: per-layer-type rotary bases (sliding vs full attention) and a scaled embedding."""

    name: str = "gemma3"

    def position_embeddings(
        self,
        config: PretrainedConfig,
        rotary: nn.Module,
        hidden: torch.Tensor,
        position_ids: torch.Tensor,
        layer_indices: range,
    ) -> list[PositionEmbeddings]:
        layer_types = [config.layer_types[index] for index in layer_indices]
        by_type = {kind: rotary(hidden, position_ids, kind) for kind in set(layer_types)}
        return [by_type[kind] for kind in layer_types]

    def fill_computed_buffers(self, module: nn.Module) -> None:
        """The embedding multiplies by sqrt(hidden_size), kept in a non-persistent ``embed_scale``."""
        for submodule in module.modules():
            if "embed_scale" in submodule._non_persistent_buffers_set:
                submodule.embed_scale.fill_(submodule.scalar_embed_scale)
        _refuse_unfilled_buffers(self.name, module, filled=frozenset({"embed_scale"}))


def _refuse_unfilled_buffers(family: str, module: nn.Module, filled: frozenset[str]) -> None:
    """Raise when ``module`` has non-persistent buffers other than ``filled`` (they would be garbage)."""
    unfilled = sorted(
        f"{prefix}.{name}" if prefix else name
        for prefix, submodule in module.named_modules()
        for name in submodule._non_persistent_buffers_set - filled
    )
    if unfilled:
        raise NotImplementedError(f"{family}: no adapter fills the computed buffers {unfilled}")


_EXPERT_KEY = re.compile(
    r"^(?P<prefix>(?:.*\.)?mlp\.experts)\.(?P<expert>\d+)\.(?P<proj>gate|up|down)_proj\.weight$"
)


@dataclass(frozen=True)
class FusedExpertsFamily(Family):
    """Qwen3-MoE: checkpoints store one tensor per expert; transformers fuses them per layer."""

    name: str = "qwen3_moe"

    def convert_checkpoint(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        converted: dict[str, torch.Tensor] = {}
        experts: dict[str, dict[str, dict[int, torch.Tensor]]] = {}
        for name, tensor in tensors.items():
            match = _EXPERT_KEY.match(name)
            if match is None:
                converted[name] = tensor
                continue
            by_proj = experts.setdefault(match["prefix"], {})
            by_proj.setdefault(match["proj"], {})[int(match["expert"])] = tensor
        for prefix, by_proj in experts.items():
            stacked = {
                proj: torch.stack([t for _, t in sorted(parts.items())]) for proj, parts in by_proj.items()
            }
            converted[f"{prefix}.gate_up_proj"] = torch.cat([stacked["gate"], stacked["up"]], dim=1)
            converted[f"{prefix}.down_proj"] = stacked["down"]
        return converted


_DECODER_LAYER = re.compile(r"^model\.layers\.\d+$")


class _DiscardedSharedKV(dict[str, PositionEmbeddings]):
    """Gemma 4's per-step map of shared keys/values; nothing here consumes it, so nothing is kept."""

    def __setitem__(self, key: str, value: PositionEmbeddings) -> None:
        return None


@dataclass(frozen=True)
class Gemma4Family(PerLayerTypeRotaryFamily):
    """Gemma 4 text: Gemma 3's per-layer-type rotary and scaled embedding, plus two refused features.

    Per-layer embeddings (``hidden_size_per_layer_input``) feed every layer a
    token-identity input computed from the token ids at the embedding, and KV
    sharing (``num_kv_shared_layers``) makes later layers attend with the keys of
    an earlier one: both need data that a split pipe does not carry between
    nodes, so such configs are refused instead of served wrong. The last layer
    of each attention type always offers its keys for sharing (``"store"``);
    with no consumer, each call gets a map that keeps nothing.
    """

    name: str = "gemma4_text"

    def check(self, config: PretrainedConfig) -> None:
        if getattr(config, "hidden_size_per_layer_input", 0):
            raise UnsupportedArchitectureError(
                f"{self.name}: per-layer embeddings (hidden_size_per_layer_input="
                f"{config.hidden_size_per_layer_input}) cannot be split across nodes yet"
            )
        if getattr(config, "num_kv_shared_layers", 0):
            raise UnsupportedArchitectureError(
                f"{self.name}: KV sharing between layers (num_kv_shared_layers="
                f"{config.num_kv_shared_layers}) cannot be split across nodes yet"
            )
        if getattr(config, "use_bidirectional_attention", None) == "all":
            raise UnsupportedArchitectureError(
                f"{self.name}: bidirectional attention is not causal generation"
            )

    def prepare_module(self, path: str, module: nn.Module) -> None:
        if _DECODER_LAYER.match(path):
            module.forward = _with_fresh_keyword(module.forward, "shared_kv_states", _DiscardedSharedKV)


def _with_fresh_keyword(
    forward: Callable[..., object], keyword: str, make: Callable[[], object]
) -> Callable[..., object]:
    @functools.wraps(forward)
    def call(*args: object, **kwargs: object) -> object:
        kwargs.setdefault(keyword, make())
        return forward(*args, **kwargs)

    return call


@dataclass(frozen=True)
class HybridLinearAttentionFamily(Family):
    """Qwen3.5: gated delta net (linear attention) layers between full-attention ones.

    A linear-attention layer keeps a recurrent state per sequence in that
    layer's cache and runs each packed sequence on its own (models/recurrent.py).
    """

    name: str = "qwen3_5_text"

    def prepare_module(self, path: str, module: nn.Module) -> None:
        if _DECODER_LAYER.match(path) and getattr(module, "block_type", None) == "linear_attention":
            run_sequences_apart(module, int(path.rsplit(".", 1)[1]))


_LLAMA_LIKE = ("llama", "qwen3", "phi3", "mistral", "ministral", "ministral3")

_FAMILIES: dict[str, Family] = {
    **{model_type: Family(name=model_type) for model_type in _LLAMA_LIKE},
    "gemma3": PerLayerTypeRotaryFamily(),
    "gemma3_text": PerLayerTypeRotaryFamily(),
    "gemma4_text": Gemma4Family(),
    "qwen3_5_text": HybridLinearAttentionFamily(),
    "qwen3_moe": FusedExpertsFamily(),
    "qwen2_moe": FusedExpertsFamily(name="qwen2_moe"),
}

# Multimodal checkpoints whose text model is served (image and audio inputs are not).
_MULTIMODAL_WRAPPERS = frozenset({"gemma4", "mistral3", "qwen3_5"})
# Where those checkpoints keep the text model's tensors, as transformers saves them and as older
# releases on the hub do; mapped onto the stand-alone text model's names.
_TEXT_MODEL_RENAMES = {
    "model.language_model.": "model.",
    "language_model.model.": "model.",
    "language_model.lm_head.": "lm_head.",
}


def text_model_renames(config: PretrainedConfig) -> dict[str, str] | None:
    """Checkpoint-name renames when ``config`` is a multimodal wrapper we serve the text model of."""
    if getattr(config, "model_type", None) in _MULTIMODAL_WRAPPERS:
        return dict(_TEXT_MODEL_RENAMES)
    return None


def supported_model_types() -> list[str]:
    return sorted(_FAMILIES)


def family_for(config: PretrainedConfig) -> Family:
    """The adapter for a model config (by ``model_type``); raises for any type without one."""
    model_type = str(getattr(config, "model_type", "") or "")
    family = _FAMILIES.get(model_type)
    if family is None:
        supported = ", ".join(supported_model_types())
        raise UnsupportedArchitectureError(
            f"model_type {model_type!r} is not supported; supported: {supported}"
            f" (and the text model of the multimodal {', '.join(sorted(_MULTIMODAL_WRAPPERS))})"
        )
    family.check(config)
    return family
