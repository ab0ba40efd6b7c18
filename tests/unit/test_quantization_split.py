"""Tiny Qwen3 / Gemma 3 / Phi-3 quantized and split: the logits of the same quantized model unsplit.

Each family's tiny random model (tests/support/tiny_models.py) is loaded at int8 and
int4 twice: once as an end model with no local layers plus one segment holding all
four layers, once split as an end model with one local layer plus two segments.
Splitting only hands bf16 hidden states from one segment to the next, so at every
step (prefill, then greedy decode) the split logits must equal the unsplit ones.
Also here: layers loaded at the checkpoint's own dtype no longer keep its memory
mapping open (models/partial.py).
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch

from language_pipes.models.end_model import EndModel
from language_pipes.models.partial import ModelSource
from language_pipes.models.quantization import QuantizedLinear, weight_format
from language_pipes.models.segment import LayerSegment
from support.split_checks import DECODE_STEPS, PROMPT
from support.tiny_models import SplitModel, TinyFamily, build_tiny_model

CPU = torch.device("cpu")
QUANTIZED_FAMILIES: tuple[TinyFamily, ...] = ("qwen3", "gemma3", "phi3")


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[TinyFamily, Path]:
    root = tmp_path_factory.mktemp("tiny-quantized")
    return {family: build_tiny_model(family, root / family) for family in QUANTIZED_FAMILIES}


def _quantized(folder: Path, boundaries: tuple[int, ...], data_type: str) -> SplitModel:
    """Layers ``[0, boundaries[0])`` in an end model, then one segment per boundary, all ``data_type``."""
    weights = weight_format(data_type)
    source = ModelSource.open(folder)
    end = EndModel("q", folder, num_local_layers=boundaries[0], source=source, weights=weights)
    quantized_source = source.with_weights(weights)
    segments = [
        LayerSegment(quantized_source, start, stop, weights.activation_dtype, CPU)
        for start, stop in zip(boundaries, boundaries[1:], strict=False)
    ]
    return SplitModel(end, segments)


def _logits_at_every_step(model: SplitModel) -> list[torch.Tensor]:
    """Prefill ``PROMPT``, then ``DECODE_STEPS`` greedy steps; the logits of each step."""
    steps, position, feed = [], 0, list(PROMPT)
    for _ in range(DECODE_STEPS + 1):
        logits = model.step(["s"], [position], [feed])
        steps.append(logits)
        position += len(feed)
        feed = [int(logits[-1].argmax())]
    return steps


@pytest.mark.parametrize("data_type", ["int8", "int4"])
@pytest.mark.parametrize("family", QUANTIZED_FAMILIES)
def test_quantized_split_logits_equal_the_quantized_model_unsplit(
    family: TinyFamily, data_type: str, tiny_folders: dict[TinyFamily, Path]
) -> None:
    folder = tiny_folders[family]
    unsplit = _quantized(folder, (0, 4), data_type)
    split = _quantized(folder, (1, 2, 4), data_type)
    for model in (unsplit, split):
        linears = [m for s in model.segments for m in s.layers.modules() if isinstance(m, QuantizedLinear)]
        assert linears and {m.bits for m in linears} == {weight_format(data_type).bits}
        assert isinstance(model.end.head, QuantizedLinear)
    for step, (whole, parts) in enumerate(
        zip(_logits_at_every_step(unsplit), _logits_at_every_step(split), strict=True)
    ):
        label = f"{family} {data_type} step {step}"
        torch.testing.assert_close(parts, whole, atol=1e-5, rtol=1e-5, msg=label)


def test_quantized_logits_stay_near_the_float_model(tiny_folders: dict[TinyFamily, Path]) -> None:
    """The split int8 model is really the same model: its logits are near float32's (a sanity floor)."""
    folder = tiny_folders["qwen3"]
    source = ModelSource.open(folder)
    float_end = EndModel("f", folder, num_local_layers=1, dtype=torch.float32, source=source)
    float_model = SplitModel(float_end, [LayerSegment(source, 1, 4, torch.float32, CPU)])
    expected = float_model.step(["s"], [0], [PROMPT])
    got = _quantized(folder, (1, 2, 4), "int8").step(["s"], [0], [PROMPT])
    assert float((got - expected).norm() / expected.norm()) < 0.05


def test_layers_at_the_checkpoint_dtype_close_its_mapping(tiny_folders: dict[TinyFamily, Path]) -> None:
    """float32 layers from a float32 checkpoint hold copies, not views keeping the file's pages resident."""
    folder = tiny_folders["phi3"]
    segment = LayerSegment(ModelSource.open(folder), 0, 4, torch.float32, CPU)
    gc.collect()
    maps = Path("/proc/self/maps").read_text()
    assert str(folder / "model.safetensors") not in maps
    assert segment.layers[0].self_attn.o_proj.weight.dtype == torch.float32
