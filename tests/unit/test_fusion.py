"""Fused q/k/v and gate/up projections give the separate projections' numbers, bit for bit.

On a real decoder layer of the default model (bf16): each projection of a fused
group, called the way transformers' modules call them, returns exactly what
the original ``nn.Linear`` returns, for one row and for many; a member called
with another input computes its own slice; two threads do not see each other's
outputs; the members' weights are views of one stacked tensor.
"""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from language_pipes.models.fusion import FusedProjection, fuse_projections
from language_pipes.models.partial import ModelSource
from support.tiny_models import default_model_folder

# Rerun under a second CPU kernel family by scripts/test.sh (see README, Tests).
pytestmark = pytest.mark.numerics


@pytest.fixture(scope="module")
def layers(model_store_dir: Path) -> tuple[nn.Module, nn.Module]:
    """(original, fused) copies of decoder layer 3."""
    source = ModelSource.open(default_model_folder(model_store_dir))
    original = source.load_module("model.layers.3", torch.bfloat16, torch.device("cpu"))
    fused = copy.deepcopy(original)
    assert fuse_projections(fused) == 2  # q/k/v in attention, gate/up in the MLP
    return original, fused


@pytest.mark.parametrize("rows", [1, 2, 7, 256])
def test_fused_projections_return_the_separate_projections_bits(
    layers: tuple[nn.Module, nn.Module], rows: int
) -> None:
    original, fused = layers
    torch.manual_seed(rows)
    hidden = torch.randn(1, rows, 576, dtype=torch.bfloat16)
    with torch.inference_mode():
        for name in ("q_proj", "k_proj", "v_proj"):  # the order LlamaAttention calls them in
            expected = getattr(original.self_attn, name)(hidden)
            actual = getattr(fused.self_attn, name)(hidden)
            assert isinstance(getattr(fused.self_attn, name), FusedProjection)
            assert actual.is_contiguous() and torch.equal(actual, expected), name
        assert torch.equal(fused.mlp(hidden), original.mlp(hidden))


def test_a_member_called_with_another_input_computes_its_own_slice(
    layers: tuple[nn.Module, nn.Module],
) -> None:
    original, fused = layers
    first, second = torch.randn(2, 1, 3, 576, dtype=torch.bfloat16)
    with torch.inference_mode():
        fused.self_attn.q_proj(first)  # k and v of `first` now wait to be taken
        assert torch.equal(fused.self_attn.k_proj(second), original.self_attn.k_proj(second))
        assert torch.equal(fused.self_attn.v_proj(first), original.self_attn.v_proj(first))
        assert torch.equal(fused.self_attn.q_proj(first), original.self_attn.q_proj(first))


def test_threads_take_only_their_own_outputs(layers: tuple[nn.Module, nn.Module]) -> None:
    original, fused = layers
    inputs = [torch.randn(1, 4, 576, dtype=torch.bfloat16) for _ in range(2)]
    q_done, other_done = threading.Event(), threading.Event()
    results: dict[int, torch.Tensor] = {}

    def first_thread() -> None:
        with torch.inference_mode():
            fused.mlp.gate_proj(inputs[0])
            q_done.set()
            other_done.wait(10)  # the other thread runs a whole group in between
            results[0] = fused.mlp.up_proj(inputs[0])

    def second_thread() -> None:
        q_done.wait(10)
        with torch.inference_mode():
            fused.mlp.gate_proj(inputs[1])
            results[1] = fused.mlp.up_proj(inputs[1])
        other_done.set()

    threads = [threading.Thread(target=first_thread), threading.Thread(target=second_thread)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    with torch.inference_mode():
        for index in (0, 1):
            assert torch.equal(results[index], original.mlp.up_proj(inputs[index]))


def test_member_weights_are_views_of_one_stacked_tensor(layers: tuple[nn.Module, nn.Module]) -> None:
    original, fused = layers
    attention = fused.self_attn
    stacked = attention.q_proj.group.weight
    assert stacked.shape[0] == sum(getattr(attention, n).out_features for n in ("q_proj", "k_proj", "v_proj"))
    for name in ("q_proj", "k_proj", "v_proj"):
        weight = getattr(attention, name).weight
        assert weight.untyped_storage().data_ptr() == stacked.untyped_storage().data_ptr()
        assert torch.equal(weight, getattr(original.self_attn, name).weight)
