"""Every supported family, split into segments, gives the logits of the one-process transformers model.

Tiny random float32 models (tests/support/tiny_models.py) are saved in the
checkpoint layout transformers writes, loaded back through ModelSource,
EndModel and LayerSegment split at several points, and compared at every step
of prefill plus ten decode steps with transformers' own model run step by step
with its cache, and with ``generate``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache, PreTrainedModel

from language_pipes.models.architectures import FusedExpertsFamily, PerLayerTypeRotaryFamily, family_for
from language_pipes.models.partial import ModelSource
from support.tiny_models import (
    GEMMA_SLIDING_WINDOW,
    TINY_FAMILIES,
    TinyFamily,
    build_tiny_model,
    open_split,
)

# Rerun under a second CPU kernel family by scripts/test.sh (see README, Tests).
pytestmark = pytest.mark.numerics

DECODE_STEPS = 10
PROMPT = [1, 17, 42, 99, 5, 63, 128, 7, 77, 31, 150, 12, 88, 3]  # longer than Gemma's sliding window
OTHER_PROMPT = [1, 9, 140, 33, 61, 4, 120, 45, 18]
ATOL = 2e-4  # float32 on both sides: only summation order differs

# Split points as the segment boundaries after the end model's local layers (4 layers in total).
SPLITS: dict[str, tuple[int, ...]] = {
    "local1+1+2": (1, 2, 4),
    "local0+2+2": (0, 2, 4),
    "local1+3": (1, 4),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[TinyFamily, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {family: build_tiny_model(family, root / family) for family in TINY_FAMILIES}


def reference_model(folder: Path) -> PreTrainedModel:
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


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("split", list(SPLITS))
def test_split_logits_match_transformers_at_every_step(
    family: TinyFamily, split: str, tiny_folders: dict[TinyFamily, Path]
) -> None:
    folder = tiny_folders[family]
    ours = open_split(folder, SPLITS[split], torch.float32)
    reference = reference_model(folder)
    position, feed = 0, list(PROMPT)
    for step, expected in enumerate(reference_steps(reference, PROMPT, DECODE_STEPS)):
        got = ours.step(["s"], [position], [feed])
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-4, msg=f"{family} step {step}")
        position += len(feed)
        feed = [int(expected[-1].argmax())]
    assert position == len(PROMPT) + DECODE_STEPS


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_split_greedy_tokens_match_generate(family: TinyFamily, tiny_folders: dict[TinyFamily, Path]) -> None:
    folder = tiny_folders[family]
    ours = open_split(folder, (1, 2, 4), torch.float32)
    reference = reference_model(folder)
    with torch.inference_mode():
        generated = reference.generate(torch.tensor([PROMPT]), do_sample=False, max_new_tokens=DECODE_STEPS)
    expected = generated[0, len(PROMPT) :].tolist()

    tokens = ours.greedy("g", PROMPT, DECODE_STEPS)
    assert tokens == expected
    assert len(set(tokens)) > 1, "a constant output would not show that the models agree"


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_chunked_prefill_and_packed_batch_match_one_sequence_alone(
    family: TinyFamily, tiny_folders: dict[TinyFamily, Path]
) -> None:
    """Prefill in chunks of 5 (crossing Gemma's window) while another sequence shares each step."""
    folder = tiny_folders[family]
    alone = open_split(folder, (1, 3, 4), torch.float32)
    expected = alone.step(["a"], [0], [PROMPT])
    expected_other = alone.step(["b"], [0], [OTHER_PROMPT])

    packed = open_split(folder, (1, 3, 4), torch.float32)
    rows: list[torch.Tensor] = []
    other_rows: list[torch.Tensor] = []
    other_fed = 0
    for start in range(0, len(PROMPT), 5):
        chunk = PROMPT[start : start + 5]
        other_chunk = OTHER_PROMPT[other_fed : other_fed + 3]
        if other_chunk:
            logits = packed.step(["a", "b"], [start, other_fed], [chunk, other_chunk])
            rows.append(logits[: len(chunk)])
            other_rows.append(logits[len(chunk) :])
            other_fed += len(other_chunk)
        else:
            rows.append(packed.step(["a"], [start], [chunk]))
    torch.testing.assert_close(torch.cat(rows), expected, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(torch.cat(other_rows), expected_other, atol=ATOL, rtol=1e-4)
    assert len(PROMPT) > GEMMA_SLIDING_WINDOW + 5


def test_each_family_has_its_adapter(tiny_folders: dict[TinyFamily, Path]) -> None:
    families = {family: ModelSource.open(folder).family for family, folder in tiny_folders.items()}
    assert isinstance(families["gemma3"], PerLayerTypeRotaryFamily)
    assert isinstance(families["qwen3_moe"], FusedExpertsFamily)
    assert {families[name].name for name in ("llama", "qwen3", "phi3")} == {"llama", "qwen3", "phi3"}
    assert family_for(ModelSource.open(tiny_folders["gemma3"]).config).name == "gemma3"


def test_moe_checkpoint_stores_experts_separately(tiny_folders: dict[TinyFamily, Path]) -> None:
    """The adapter's conversion is really exercised: the file holds per-expert tensors only."""
    source = ModelSource.open(tiny_folders["qwen3_moe"])
    names = source.reader.names_with_prefix("model.layers.0.mlp.experts.")
    assert "model.layers.0.mlp.experts.3.gate_proj.weight" in names
    assert not any(name.endswith("gate_up_proj") for name in names)
    layer = source.load_module("model.layers.0", torch.float32, torch.device("cpu"))
    reference = reference_model(tiny_folders["qwen3_moe"])
    torch.testing.assert_close(
        layer.mlp.experts.gate_up_proj, reference.model.layers[0].mlp.experts.gate_up_proj, atol=0, rtol=0
    )
