"""Build only the modules a node hosts: skeleton on the meta device, weights read selectively.

The whole model is instantiated on the ``meta`` device (no memory), then each
hosted module is materialised on its real device and filled with exactly the
checkpoint tensors under its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from language_pipes.models.architectures import Family, family_for, text_model_renames
from language_pipes.models.attention import ATTENTION_NAME
from language_pipes.models.weights import WeightReader

DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}


@dataclass
class ModelSource:
    """A model folder opened for partial loading."""

    folder: Path
    config: PretrainedConfig
    family: Family
    reader: WeightReader
    skeleton: nn.Module

    @classmethod
    def open(cls, folder: Path) -> ModelSource:
        config = AutoConfig.from_pretrained(folder)
        renames = text_model_renames(config)
        if renames is not None:  # a multimodal checkpoint: serve its text model, leave the rest on disk
            config = config.get_text_config()
        family = family_for(config)
        config._attn_implementation = ATTENTION_NAME
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
        return cls(folder, config, family, WeightReader(folder, renames), skeleton)

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    def layer_nbytes(self, dtype: torch.dtype) -> int:
        """Size of the largest decoder layer's weights at ``dtype`` (placement budgets every layer so).

        Layers differ in hybrid models: Qwen3.5's linear-attention layers and Gemma 4's
        full-attention ones are not the size of layer 0.
        """
        return max(self.reader.stored_nbytes(f"model.layers.{i}.", dtype) for i in range(self.num_layers))

    def kv_bytes_per_token(self, dtype: torch.dtype) -> int:
        """KV cache bytes one token costs in one layer (the largest layer's, where they differ).

        Read off the skeleton's key projections where it has them: Gemma 4 sizes heads
        per layer type (its config refuses a global ``head_dim``), and Qwen3.5's
        linear-attention layers keep no keys at all. Fused projections (Phi-3's
        ``qkv_proj``) leave the config's head counts.
        """
        element = torch.empty((), dtype=dtype).element_size()
        widths = [
            int(attention.k_proj.out_features)
            for layer in self.skeleton.get_submodule("model.layers")
            if (attention := getattr(layer, "self_attn", None)) is not None and hasattr(attention, "k_proj")
        ]
        if widths:
            return 2 * max(widths) * element
        head_dim = (
            getattr(self.config, "head_dim", None)
            or self.config.hidden_size // self.config.num_attention_heads
        )
        kv_heads = getattr(self.config, "num_key_value_heads", None) or self.config.num_attention_heads
        return 2 * kv_heads * head_dim * element

    def load_module(self, path: str, dtype: torch.dtype, device: torch.device) -> nn.Module:
        """Materialise the skeleton's submodule at ``path`` (e.g. ``model.layers.3``) with its weights."""
        module = self.skeleton.get_submodule(path)
        prefix = f"{path}."
        tensors = self.reader.read(self.reader.names_with_prefix(prefix), dtype, device)
        local = self.family.convert_checkpoint({name[len(prefix) :]: t for name, t in tensors.items()})
        module = module.to(dtype=dtype).to_empty(device=device)
        module.load_state_dict(local, strict=True, assign=True)
        self.family.fill_computed_buffers(module)
        self.family.prepare_module(path, module)
        return module.eval()

    def load_head(self, dtype: torch.dtype, device: torch.device) -> nn.Module:
        """The output projection, sharing the embedding's weights when the checkpoint ties them."""
        if self.reader.has("lm_head.weight"):
            return self.load_module("lm_head", dtype, device)
        head = self.skeleton.get_submodule("lm_head").to(dtype=dtype).to_empty(device=device)
        weight = self.reader.read(["model.embed_tokens.weight"], dtype, device)["model.embed_tokens.weight"]
        head.load_state_dict({"weight": weight}, strict=False, assign=True)
        return head.eval()

    def rotary(self, device: torch.device) -> nn.Module:
        """A fresh rotary embedding module (its buffers are computed, not stored)."""
        meta_rotary = self.skeleton.get_submodule("model.rotary_emb")
        with torch.device("cpu"):
            rotary = type(meta_rotary)(config=self.config)
        return rotary.to(device)
