"""Qwen3.5's linear-attention layers: their recurrent state lives with the layer, dies with the sequence.

The state sits in the cache of the segment that hosts the layer (none where a
segment hosts only full attention), counts toward its cache bytes, is freed
on release, restarts when a sequence is replayed from position 0, and a cut
back to any other position makes the next step ask for a replay instead of
running on a wrong state.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from language_pipes.models.segment import UnknownSequenceError
from language_pipes.vocabulary import SequenceId
from support.split_checks import ATOL, PROMPT
from support.tiny_models import SplitModel, build_tiny_model, open_split

LINEAR_LAYERS = (0, 1, 3)  # layer 2 is full attention (tests/support/tiny_models.py)
DECODED = [5, 77, 12, 140]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model("qwen3_5_text", tmp_path_factory.mktemp("qwen3_5") / "model")


def _run(split: SplitModel, sequence_id: str) -> list[torch.Tensor]:
    """Prefill, then the DECODED tokens one step each; the logits of every step."""
    logits = [split.step([sequence_id], [0], [PROMPT])]
    for offset, token in enumerate(DECODED):
        logits.append(split.step([sequence_id], [len(PROMPT) + offset], [[token]]))
    return logits


def _recurrent_layers(split: SplitModel, sequence_id: str) -> dict[int, int]:
    """Absolute layer index -> bytes of its recurrent state, over every segment of the split."""
    found: dict[int, int] = {}
    for segment in (split.end.local_layers, *split.segments):
        cache = segment._caches.get(SequenceId(sequence_id))
        for index, layer_cache in cache.layers.items() if cache else ():
            if layer_cache._recurrent is not None and layer_cache._recurrent.nbytes():
                found[index] = layer_cache._recurrent.nbytes()
    return found


def test_the_state_lives_in_the_segment_hosting_the_layer_and_is_freed_with_the_sequence(
    folder: Path,
) -> None:
    split = open_split(folder, (1, 2, 3, 4), torch.float32)
    _run(split, "s")
    assert sorted(_recurrent_layers(split, "s")) == list(LINEAR_LAYERS)
    full_attention_only = split.segments[1]  # layer 2
    assert full_attention_only.layer_range == range(2, 3)
    cache = full_attention_only._caches[SequenceId("s")]
    assert cache.layers[2]._recurrent is None and cache.length == len(PROMPT) + len(DECODED)
    for segment in (split.end.local_layers, split.segments[0], split.segments[2]):
        assert segment._caches[SequenceId("s")].length == len(PROMPT) + len(DECODED)
        assert segment.cache_nbytes() > 0  # the state counts toward the cache budget

    split.release("s")
    for segment in (split.end.local_layers, *split.segments):
        assert segment.sequence_count == 0 and segment.cache_nbytes() == 0


def test_a_replay_from_position_zero_restarts_the_state(folder: Path) -> None:
    split = open_split(folder, (1, 3, 4), torch.float32)
    first = _run(split, "s")
    replayed = _run(split, "s")  # same sequence id: the caches are cut back to 0, the state restarts
    for step, (a, b) in enumerate(zip(first, replayed, strict=True)):
        torch.testing.assert_close(b, a, atol=ATOL, rtol=1e-4, msg=f"step {step}")


def test_a_retried_step_at_the_current_position_keeps_the_state(folder: Path) -> None:
    alone = open_split(folder, (1, 3, 4), torch.float32)
    expected = _run(alone, "s")
    split = open_split(folder, (1, 3, 4), torch.float32)
    split.step(["s"], [0], [PROMPT])
    # A segment truncating to where every cache already is (start == length) must not touch the state.
    for segment in (split.end.local_layers, *split.segments):
        segment._caches[SequenceId("s")].truncate(len(PROMPT))
    got = split.step(["s"], [len(PROMPT)], [[DECODED[0]]])
    torch.testing.assert_close(got, expected[1], atol=ATOL, rtol=1e-4)


def test_cutting_the_state_back_mid_sequence_asks_for_a_replay(folder: Path) -> None:
    split = open_split(folder, (1, 3, 4), torch.float32)
    _run(split, "s")
    position = len(PROMPT) + 1
    with pytest.raises(UnknownSequenceError):
        # Retrying the step at `position` cuts every cache back to it: keys and values can, the state cannot.
        split.step(["s"], [position], [[DECODED[1]]])
    replayed = _run(split, "s")  # the origin's answer: replay from 0, which works
    expected = _run(open_split(folder, (1, 3, 4), torch.float32), "s")
    for step, (a, b) in enumerate(zip(expected, replayed, strict=True)):
        torch.testing.assert_close(b, a, atol=ATOL, rtol=1e-4, msg=f"step {step}")


def test_sequences_packed_in_one_step_keep_separate_states(folder: Path) -> None:
    alone = open_split(folder, (1, 3, 4), torch.float32)
    expected_a = alone.step(["a"], [0], [PROMPT])
    expected_b = alone.step(["b"], [0], [PROMPT[:5]])
    packed = open_split(folder, (1, 3, 4), torch.float32)
    logits = packed.step(["a", "b"], [0, 0], [PROMPT, PROMPT[:5]])
    torch.testing.assert_close(logits[: len(PROMPT)], expected_a, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(logits[len(PROMPT) :], expected_b, atol=ATOL, rtol=1e-4)
    # Then both decode in one step (each a one-token row) and still match decoding alone.
    next_a = alone.step(["a"], [len(PROMPT)], [[7]])
    next_b = alone.step(["b"], [5], [[9]])
    both = packed.step(["a", "b"], [len(PROMPT), 5], [[7], [9]])
    torch.testing.assert_close(both, torch.cat([next_a, next_b]), atol=ATOL, rtol=1e-4)
