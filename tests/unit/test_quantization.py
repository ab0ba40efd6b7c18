"""int8 / int4 weight-only layers: packing round trips, config forms, and quantized split pipes.

Agreement with bf16 is the share of teacher-forced next tokens over the fixed prompt below
that equal bf16's; the tests assert floors (70-80 %), not bit identity. Over the benchmark's
2,048-token text (benchmarks/quantization.py) the whole model agrees ~94 % at int8, ~70 % at int4.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from language_pipes.config import ConfigError, parse_config
from language_pipes.models.end_model import EndModel
from language_pipes.models.partial import ModelSource
from language_pipes.models.quantization import (
    QuantizationError,
    QuantizedLinear,
    cuda_inner_k_tiles,
    dequantize_int4,
    int4_group_size,
    quantize_linears,
    weight_format,
)
from language_pipes.models.segment import LayerSegment
from support.tiny_models import SplitModel, open_split

CPU = torch.device("cpu")
PROMPT = (
    "The river ran past the mill and under the old stone bridge, where children threw "
    "pebbles into the water and counted the rings until the miller called them home for supper."
)

# -- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "parsed"),
    [
        ("16", "bfloat16"),
        ("8", "int8"),
        ("4", "int4"),
        ('"bfloat16"', "bfloat16"),
        ('"float16"', "float16"),
        ('"float32"', "float32"),
        ('"int8"', "int8"),
        ('"int4"', "int4"),
    ],
)
def test_data_type_accepts_bits_and_names(written: str, parsed: str) -> None:
    document = {
        "node_id": "a",
        "layer_models": [{"model_id": "m", "memory": 1.0, "data_type": eval(written)}],
        "end_models": [{"model_id": "m", "data_type": eval(written)}],
    }
    config = parse_config(document)
    assert config.layer_models[0].data_type == parsed
    assert config.end_models[0].data_type == parsed


@pytest.mark.parametrize("value", ["int3", 32, 0, True, "INT8", 8.0])
def test_bad_data_type_names_the_key(value: object) -> None:
    document = {"node_id": "a", "layer_models": [{"model_id": "m", "memory": 1.0, "data_type": value}]}
    with pytest.raises(ConfigError, match=r"layer_models\[0\]\.data_type: must be"):
        parse_config(document)
    with pytest.raises(ConfigError, match=r"end_models\[0\]\.data_type: must be"):
        parse_config({"node_id": "a", "end_models": [{"model_id": "m", "data_type": value}]})


def test_end_model_data_type_defaults_to_the_device_dtype() -> None:
    config = parse_config({"node_id": "a", "end_models": ["m"]})
    assert config.end_models[0].data_type is None
    assert weight_format(None, "cpu").activation_dtype == torch.bfloat16
    assert weight_format(None, "cuda:0").activation_dtype == torch.float16
    assert weight_format("int4").activation_dtype == torch.bfloat16 and weight_format("int4").bits == 4


# -- packing round trips -----------------------------------------------------------------------


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.float() - expected.float()).norm() / expected.float().norm())


@pytest.mark.parametrize("shape", [(576, 576), (192, 576), (1536, 576), (576, 1536), (64, 96)])
@pytest.mark.parametrize("rows", [1, 16, 256])
def test_int8_matches_its_dequantized_weight(shape: tuple[int, int], rows: int) -> None:
    torch.manual_seed(0)
    weight = torch.randn(shape, dtype=torch.bfloat16) * 0.05
    bias = torch.randn(shape[0], dtype=torch.bfloat16)
    linear = QuantizedLinear.from_weight(weight, bias, 8)
    inputs = torch.randn(1, rows, shape[1], dtype=torch.bfloat16)
    reference = inputs.float() @ linear.dequantized().t() + bias.float()
    output = linear(inputs)
    assert output.shape == (1, rows, shape[0]) and output.dtype == torch.bfloat16
    assert _relative_error(output, reference) < 0.01
    # ... and the dequantized weight is within int8's rounding of the original.
    assert (linear.dequantized() - weight.float()).abs().max() <= linear.scales.float().max() / 2 + 1e-3


@pytest.mark.parametrize("shape", [(576, 576), (192, 576), (3072, 576), (576, 1536), (48, 96)])
@pytest.mark.parametrize("rows", [1, 16, 256])
def test_int4_matches_its_dequantized_weight(shape: tuple[int, int], rows: int) -> None:
    torch.manual_seed(0)
    weight = torch.randn(shape, dtype=torch.bfloat16) * 0.05
    linear = QuantizedLinear.from_weight(weight, None, 4)
    group = int4_group_size(shape[1])
    assert linear.group_size == group
    reference_weight = dequantize_int4(weight, group)  # type: ignore[arg-type]
    inputs = torch.randn(rows, shape[1], dtype=torch.bfloat16)
    output = linear(inputs)
    assert _relative_error(output, inputs.float() @ reference_weight.t()) < 0.01
    # 4 bits over a group's range: the reconstruction is coarse but bounded.
    assert _relative_error(reference_weight, weight) < 0.15


@pytest.mark.parametrize("bits", [8, 4])
def test_kernels_compute_each_row_independently_of_the_others(bits: int) -> None:
    """What batch-invariant mode relies on: a row's output does not depend on its step's other rows."""
    torch.manual_seed(1)
    linear = QuantizedLinear.from_weight(torch.randn(960, 576, dtype=torch.bfloat16) * 0.05, None, bits)
    inputs = torch.randn(40, 576, dtype=torch.bfloat16)
    together = linear(inputs)
    for start, count in ((0, 1), (7, 1), (11, 5), (39, 1)):
        assert torch.equal(linear(inputs[start : start + count]), together[start : start + count])


def test_cuda_int4_layout_picks_inner_tiles_that_divide_the_width() -> None:
    """CUDA tinygemm tiles K by 16 x innerKTiles; 576 (the default model) is not a multiple of 128."""
    assert cuda_inner_k_tiles(576) == 4 and cuda_inner_k_tiles(1536) == 8 and cuda_inner_k_tiles(96) == 2
    with pytest.raises(QuantizationError, match="width of 40"):
        cuda_inner_k_tiles(40)


def test_a_weight_int4_cannot_pack_says_which() -> None:
    with pytest.raises(QuantizationError, match=r"layer\.odd.*\[64, 40\]"):
        QuantizedLinear.from_weight(torch.randn(64, 40), None, 4, name="layer.odd")
    module = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 40))
    with pytest.raises(QuantizationError, match=r"block\.1"):
        quantize_linears(module, 4, torch.bfloat16, "block")


def test_fused_groups_quantize_each_member_as_if_alone() -> None:
    torch.manual_seed(0)

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q_proj, self.k_proj, self.v_proj = (nn.Linear(64, n, bias=False) for n in (64, 32, 32))

    attention = Attention().to(torch.bfloat16)
    alone = {"k_proj": QuantizedLinear.from_weight(attention.k_proj.weight, None, 8)}
    assert quantize_linears(attention, 8, torch.bfloat16, "attn") == 3
    inputs = torch.randn(3, 64, dtype=torch.bfloat16)
    outputs = [attention.q_proj(inputs), attention.k_proj(inputs), attention.v_proj(inputs)]
    assert [o.shape[-1] for o in outputs] == [64, 32, 32]
    assert torch.equal(outputs[1], alone["k_proj"](inputs))


# -- the default model, quantized and split -----------------------------------------------------


@pytest.fixture(scope="module")
def reference(default_model_dir: Path) -> SplitModel:
    return open_split(default_model_dir, (1, 8, 15, 30), torch.bfloat16)


@pytest.fixture(scope="module")
def reference_tokens(reference: SplitModel) -> list[int]:
    return _next_tokens(reference, reference.end.tokenizer.encode(PROMPT), "r")


def _next_tokens(model: SplitModel, prompt: list[int], name: str) -> list[int]:
    logits = model.step([name], [0], [prompt])
    model.release(name)
    return logits.argmax(dim=-1).tolist()


def _agreement(a: list[int], b: list[int]) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


def test_split_model_with_int8_and_int4_segments_decodes(
    reference: SplitModel, reference_tokens: list[int]
) -> None:
    source: ModelSource = reference.end.source
    segments = [
        LayerSegment(source.with_weights(weight_format("int8")), 1, 8, torch.bfloat16, CPU),
        LayerSegment(source.with_weights(weight_format("int4")), 8, 15, torch.bfloat16, CPU),
        reference.segments[2],
    ]
    assert isinstance(segments[0].layers[0].self_attn.o_proj, QuantizedLinear)
    quantized = SplitModel(reference.end, segments)
    prompt = reference.end.tokenizer.encode(PROMPT)
    agreement = _agreement(_next_tokens(quantized, prompt, "q"), reference_tokens)
    assert agreement >= 0.7, agreement
    tokens = quantized.greedy("g", reference.end.tokenizer.encode("The capital of France is"), 6)
    assert len(tokens) == 6 and all(0 <= t < reference.end.head.out_features for t in tokens)


def test_mixed_pipe_bf16_end_model_and_int4_segment(
    reference: SplitModel, reference_tokens: list[int]
) -> None:
    source = reference.end.source
    int4 = LayerSegment(source.with_weights(weight_format("int4")), 1, 8, torch.bfloat16, CPU)
    mixed = SplitModel(reference.end, [int4, *reference.segments[1:]])
    prompt = reference.end.tokenizer.encode(PROMPT)
    hidden = reference.end.embed(prompt[:4])
    assert hidden.dtype == torch.bfloat16  # what crosses the wire is bf16 whatever the weights are
    assert _agreement(_next_tokens(mixed, prompt, "m"), reference_tokens) >= 0.7


def test_quantized_end_model_quantizes_head_and_local_layers_not_embedding(
    reference: SplitModel, reference_tokens: list[int], default_model_dir: Path
) -> None:
    end = EndModel(
        "q",
        default_model_dir,
        num_local_layers=1,
        source=reference.end.source,
        weights=weight_format("int8"),
    )
    assert isinstance(end.head, QuantizedLinear) and end.head.out_features == reference.end.head.out_features
    assert isinstance(end.local_layers.layers[0].mlp.down_proj, QuantizedLinear)
    assert isinstance(end.embedding, nn.Embedding) and end.embedding.weight.dtype == torch.bfloat16
    model = SplitModel(end, reference.segments)
    prompt = reference.end.tokenizer.encode(PROMPT)
    assert _agreement(_next_tokens(model, prompt, "e"), reference_tokens) >= 0.8
    # The skeleton shared with bf16 loaders is untouched by quantizing.
    assert type(reference.end.source.skeleton.get_submodule("model.layers.0.mlp.down_proj")) is nn.Linear


def test_layer_size_estimate_uses_packed_sizes(reference: SplitModel) -> None:
    source = reference.end.source
    bf16 = source.layer_nbytes(torch.bfloat16)
    int8 = source.with_weights(weight_format("int8")).layer_nbytes(torch.bfloat16)
    int4 = source.with_weights(weight_format("int4")).layer_nbytes(torch.bfloat16)
    assert 0.45 * bf16 < int8 < 0.6 * bf16 and 0.2 * bf16 < int4 < 0.4 * bf16
    segment = LayerSegment(source.with_weights(weight_format("int4")), 1, 2, torch.bfloat16, CPU)
    held = sum(t.numel() * t.element_size() for t in segment.layers[0].state_dict().values())
    assert abs(held - int4) / int4 < 0.05
