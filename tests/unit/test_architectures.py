"""Every supported family, split into segments, gives the logits of the one-process transformers model.

Tiny random float32 models (tests/support/tiny_models.py) are saved in the
checkpoint layout transformers writes, loaded back through ModelSource,
EndModel and LayerSegment split at several points, and compared at every step
of prefill plus ten decode steps with transformers' own model run step by step
with its cache, and with ``generate``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from language_pipes.models.architectures import FusedExpertsFamily, PerLayerTypeRotaryFamily, family_for
from language_pipes.models.partial import ModelSource
from support.split_checks import (
    PREFILL_CHUNK,
    PROMPT,
    SPLITS,
    check_chunked_prefill_in_a_packed_batch,
    check_greedy_matches_generate,
    check_logits_at_every_step,
)
from support.tiny_models import (
    GEMMA_SLIDING_WINDOW,
    TINY_FAMILIES,
    UPSTREAM_TINY_FAMILIES,
    TinyFamily,
    build_tiny_model,
    reference_model,
)

# Rerun under a second CPU kernel family by scripts/test.sh (see README, Tests).
pytestmark = pytest.mark.numerics
# The families this project had, and those added for the upstream release (test_architectures_upstream.py).
ALL_FAMILIES = (*TINY_FAMILIES, *UPSTREAM_TINY_FAMILIES)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[TinyFamily, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {family: build_tiny_model(family, root / family) for family in ALL_FAMILIES}


@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize("split", list(SPLITS))
def test_split_logits_match_transformers_at_every_step(
    family: TinyFamily, split: str, tiny_folders: dict[TinyFamily, Path]
) -> None:
    check_logits_at_every_step(tiny_folders[family], SPLITS[split], family)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_split_greedy_tokens_match_generate(family: TinyFamily, tiny_folders: dict[TinyFamily, Path]) -> None:
    check_greedy_matches_generate(tiny_folders[family])


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_chunked_prefill_and_packed_batch_match_one_sequence_alone(
    family: TinyFamily, tiny_folders: dict[TinyFamily, Path]
) -> None:
    """Prefill in chunks of 5 (crossing Gemma's window) while another sequence shares each step."""
    check_chunked_prefill_in_a_packed_batch(tiny_folders[family])
    assert len(PROMPT) > GEMMA_SLIDING_WINDOW + PREFILL_CHUNK


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
