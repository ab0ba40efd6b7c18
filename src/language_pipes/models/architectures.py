"""Per-family adapters: the few places where model families differ for a split model.

Everything else (attention, MLP, norms, MoE routing) runs inside transformers'
own decoder-layer modules. An adapter only says how to compute the rotary
position embeddings a layer expects, how to map checkpoint tensors onto the
modules (when transformers fuses them at load time), how to fill the buffers a
checkpoint does not store (a module materialised from the meta device holds
garbage there), and how to finish logits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig

PositionEmbeddings = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Family:
    """Default behaviour, correct for Llama, Qwen3, Phi-3 and most decoder-only models."""

    name: str = "llama"

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


_FAMILIES: dict[str, Family] = {
    "gemma3": PerLayerTypeRotaryFamily(),
    "gemma3_text": PerLayerTypeRotaryFamily(),
    "qwen3_moe": FusedExpertsFamily(),
    "qwen2_moe": FusedExpertsFamily(name="qwen2_moe"),
}


def family_for(config: PretrainedConfig) -> Family:
    """The adapter for a model config (by ``model_type``); Llama-like by default."""
    return _FAMILIES.get(config.model_type, Family(name=config.model_type))
