"""How many of a model's layers fit a memory budget in each data type: the Models page's estimate.

The same arithmetic placement uses when a layer node loads (pipes/placement.py:
each layer's packed weights plus KV headroom), read off an installed model's
safetensors headers without loading any weight. Opening a model imports torch
and transformers, so the TUI runs this on a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from language_pipes.models.partial import ModelSource
from language_pipes.models.quantization import weight_format
from language_pipes.pipes.placement import layers_that_fit

GIGABYTE = 1_000_000_000
# The data types the Models page compares (as the upstream's TUI does).
COMPARED_DATA_TYPES = ("bfloat16", "int8", "int4")


@dataclass(frozen=True)
class LayerEstimate:
    data_type: str
    layers: int  # layers that fit (at most the model's)
    total_layers: int
    layer_bytes: int  # one layer's weights, packed when quantized

    def describe(self) -> str:
        size = f"{self.layer_bytes / 1e6:.1f} MB each"
        return f"{self.data_type}: {self.layers} of {self.total_layers} layers ({size})"


def estimate_layers(
    folder: Path, memory_gigabytes: float, data_types: tuple[str, ...] = COMPARED_DATA_TYPES
) -> list[LayerEstimate]:
    """For each data type, the layers of the model in ``folder`` that fit ``memory_gigabytes``."""
    source = ModelSource.open(folder)
    estimates = []
    for data_type in data_types:
        weights = weight_format(data_type, "cpu")
        dtype = weights.activation_dtype
        layer_bytes = source.with_weights(weights).layer_nbytes(dtype)
        fit = layers_that_fit(memory_gigabytes * GIGABYTE, layer_bytes, source.kv_bytes_per_token(dtype))
        layers = min(fit, source.num_layers)
        estimates.append(LayerEstimate(data_type, layers, source.num_layers, layer_bytes))
    return estimates


def describe_estimates(memory_gigabytes: float, estimates: list[LayerEstimate]) -> str:
    """One line for the Models page, e.g. ``In 0.3 GB: bfloat16: 15 of 30 layers (...) · int8: ...``."""
    return f"In {memory_gigabytes:g} GB: " + " · ".join(estimate.describe() for estimate in estimates)
