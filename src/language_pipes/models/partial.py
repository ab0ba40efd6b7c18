"""Build only the modules a node hosts: skeleton on the meta device, weights read selectively.

The whole model is instantiated on the ``meta`` device (no memory), then each
hosted module is materialised on its real device and filled with exactly the
checkpoint tensors under its name.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from language_pipes.models.architectures import Family, family_for, text_model_renames
from language_pipes.models.attention import ATTENTION_NAME
from language_pipes.models.heap import loading_heap
from language_pipes.models.quantization import QuantizedLinear, WeightFormat, one_thread, quantize_linears
from language_pipes.models.weights import WeightReader

log = logging.getLogger(__name__)

LAYER_PREFIX = "model.layers."


@dataclass
class ModelSource:
    """A model folder opened for partial loading."""

    folder: Path
    config: PretrainedConfig
    family: Family
    reader: WeightReader
    skeleton: nn.Module
    # Set (by :meth:`with_weights`) to an int8 / int4 format: decoder layers and the head are
    # quantized as they load. Embeddings and norms always stay at the activation dtype.
    weights: WeightFormat | None = None

    @classmethod
    def open(cls, folder: Path) -> ModelSource:
        config = AutoConfig.from_pretrained(folder)
        renames = text_model_renames(config)
        if renames is not None:  # a multimodal checkpoint: serve its text model, leave the rest on disk
            config = config.get_text_config()
        family = family_for(config)
        config._attn_implementation = ATTENTION_NAME
        return cls(folder, config, family, WeightReader(folder, renames), _meta_skeleton(config))

    def with_weights(self, weights: WeightFormat | None) -> ModelSource:
        """The same opened model (shared reader) loading weights in ``weights``.

        Loading materialises the skeleton's modules in place, and quantizing then replaces
        their linears, so a quantized view gets a skeleton of its own.
        """
        if weights is None or not weights.quantized:
            if self.weights is None:
                return self
            return dataclasses.replace(self, weights=None, skeleton=_meta_skeleton(self.config))
        return dataclasses.replace(self, weights=weights, skeleton=_meta_skeleton(self.config))

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    def layer_nbytes(self, dtype: torch.dtype) -> int:
        """Size of the largest decoder layer's weights at ``dtype``, packed when quantized.

        Placement budgets every layer so. Layers differ in hybrid models: Qwen3.5's
        linear-attention layers and Gemma 4's full-attention ones are not the size of layer 0.
        """
        return max(self._one_layer_nbytes(index, dtype) for index in range(self.num_layers))

    def _one_layer_nbytes(self, index: int, dtype: torch.dtype) -> int:
        prefix = f"{LAYER_PREFIX}{index}."
        total = self.reader.stored_nbytes(prefix, dtype)
        if self.weights is None:
            return total
        element = torch.empty((), dtype=dtype).element_size()
        for name, shape in self.reader.shapes_with_prefix(prefix).items():
            if name.endswith("proj.weight") and len(shape) == 2:
                total += self.weights.linear_nbytes(shape[0], shape[1]) - shape[0] * shape[1] * element
        return total

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
        quantize = self.weights is not None and path.startswith(LAYER_PREFIX)
        prefix = f"{path}."
        tensors = self.reader.read(self.reader.names_with_prefix(prefix), dtype, device)
        local = self.family.convert_checkpoint({name[len(prefix) :]: t for name, t in tensors.items()})
        module = module.to(dtype=dtype).to_empty(device=device)
        module.load_state_dict(local, strict=True, assign=True)
        self.family.fill_computed_buffers(module)
        self.family.prepare_module(path, module)
        if quantize:
            self._quantize(module, path)
        if path.startswith(LAYER_PREFIX):
            _own_tensors(module)
        return module.eval()

    def _quantize(self, module: nn.Module, path: str) -> None:
        assert self.weights is not None and self.weights.bits is not None
        count = quantize_linears(module, self.weights.bits, self.weights.activation_dtype, path)
        if count == 0:
            raise ValueError(f"{path}: data_type {self.weights.name} found no linear layer to quantize")
        log.debug("%s: %d linears quantized to %s", path, count, self.weights.name)

    def load_head(self, dtype: torch.dtype, device: torch.device) -> nn.Module:
        """The output projection, sharing the embedding's weights when the checkpoint ties them."""
        if self.reader.has("lm_head.weight"):
            head = self.load_module("lm_head", dtype, device)
        else:
            head = self.skeleton.get_submodule("lm_head").to(dtype=dtype).to_empty(device=device)
            tied = "model.embed_tokens.weight"
            weight = self.reader.read([tied], dtype, device)[tied]
            head.load_state_dict({"weight": weight}, strict=False, assign=True)
        if self.weights is not None and self.weights.bits is not None:
            assert isinstance(head, nn.Linear), "lm_head must be a linear layer"
            with loading_heap():  # packing's float32 temporaries of the head are ~100 MiB each
                head = QuantizedLinear.from_weight(
                    head.weight, head.bias, self.weights.head_bits, self.weights.activation_dtype, "lm_head"
                )
        return head.eval()

    def rotary(self, device: torch.device) -> nn.Module:
        """A fresh rotary embedding module (its buffers are computed, not stored)."""
        meta_rotary = self.skeleton.get_submodule("model.rotary_emb")
        with torch.device("cpu"):
            rotary = type(meta_rotary)(config=self.config)
        return rotary.to(device)


def _own_tensors(module: nn.Module) -> None:
    """Copy a layer's tensors out of the memory-mapped checkpoint, so the mapping can close.

    A tensor read at the checkpoint's dtype is a view of the file's mapping, and every page
    ever read from a mapping stays resident while any view keeps it open. Quantized layers
    keep only norms and biases from it; bfloat16 layers replace q/k/v and gate/up by fused
    copies (models/fusion.py). Either way the pages of the originals stayed in RSS beside
    what the layer really holds (about 140 MiB on a bf16 node hosting the default model's
    layers, benchmarks/quantization_memory.py). Embeddings are not copied: a view of them
    keeps only the rows of the tokens looked up resident.
    """
    with one_thread():  # a copy on a loading thread must not start an OpenMP team there
        owned = {
            name: tensor.clone() if tensor.device.type == "cpu" else tensor  # off CPU: copied already
            for name, tensor in module.state_dict(keep_vars=True).items()
        }
    module.load_state_dict(owned, strict=True, assign=True)


def _meta_skeleton(config: PretrainedConfig) -> nn.Module:
    """The whole model on the ``meta`` device: structure and names, no memory."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)
