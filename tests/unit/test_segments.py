"""The default model split into an end model and layer segments decodes exactly like transformers.

bf16, one torch thread, the real SmolLM2-135M-Instruct folder: greedy tokens
through EndModel + LayerSegment(s), split at several points, are identical to
``AutoModelForCausalLM.generate(do_sample=False)``; chunked prefill, packing
two sequences in one step and replaying a sequence without its cache give the
same tokens. ``batch_invariant`` segments give bit-identical logits whatever
shares a step, however the prompt is chunked and after a replay.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache, PreTrainedModel

from language_pipes.models.end_model import EndModel
from language_pipes.models.segment import LayerSegment, SegmentBatch, UnknownSequenceError
from language_pipes.vocabulary import SequenceId
from support.tiny_models import SplitModel, default_model_folder, open_split

# Rerun under a second CPU kernel family by scripts/test.sh (see README, Tests).
pytestmark = pytest.mark.numerics

NEW_TOKENS = 32
CHATS: dict[str, list[dict[str, object]]] = {
    "capital": [{"role": "user", "content": "What is the capital of France?"}],
    "poem": [
        {"role": "system", "content": "You are a poet who answers in rhyme."},
        {"role": "user", "content": "Write a short poem about networks."},
    ],
    "explain": [{"role": "user", "content": "Explain distributed computing to a child, step by step."}],
}
# Split points: the end model's local layers end at the first boundary; each next one ends a segment.
SPLITS: dict[str, tuple[int, ...]] = {
    "1+29": (1, 30),
    "1+11+18": (1, 12, 30),
    "0+30": (0, 30),
    "0+7+23": (0, 7, 30),
}


@pytest.fixture(scope="module")
def folder(model_store_dir: Path) -> Path:
    torch.set_num_threads(1)
    return default_model_folder(model_store_dir)


@pytest.fixture(scope="module")
def end_model(folder: Path) -> EndModel:
    return EndModel("smol", folder, num_local_layers=1, dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def prompts(end_model: EndModel) -> dict[str, list[int]]:
    return {name: end_model.encode_chat(chat) for name, chat in CHATS.items()}


@pytest.fixture(scope="module")
def reference_model(folder: Path) -> PreTrainedModel:
    model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    model.generation_config.eos_token_id = None  # EOS ignored so every prompt yields NEW_TOKENS tokens
    model.generation_config.pad_token_id = 0
    return model


@pytest.fixture(scope="module")
def reference_tokens(reference_model: PreTrainedModel, prompts: dict[str, list[int]]) -> dict[str, list[int]]:
    """transformers generate(do_sample=False) for every prompt."""
    expected: dict[str, list[int]] = {}
    with torch.inference_mode():
        for name, prompt in prompts.items():
            output = reference_model.generate(
                torch.tensor([prompt]), do_sample=False, max_new_tokens=NEW_TOKENS
            )
            expected[name] = output[0, len(prompt) :].tolist()
    return expected


def reference_chunked_greedy(model: PreTrainedModel, prompt: list[int], chunk: int) -> list[int]:
    """transformers' own model and cache, the prompt fed ``chunk`` tokens at a time, then greedy decode."""
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        for start in range(0, len(prompt), chunk):
            feed = torch.tensor([prompt[start : start + chunk]])
            logits = model(feed, cache=cache, use_cache=True).logits[0, -1]
        tokens = [int(logits.argmax())]
        while len(tokens) < NEW_TOKENS:
            logits = model(torch.tensor([[tokens[-1]]]), cache=cache, use_cache=True).logits[0, -1]
            tokens.append(int(logits.argmax()))
    return tokens


def up_to_first_eos(tokens: list[int], eos_token_ids: frozenset[int]) -> list[int]:
    """The answer a client sees: everything up to and including the first end-of-sequence token."""
    for index, token in enumerate(tokens):
        if token in eos_token_ids:
            return tokens[: index + 1]
    return tokens


@pytest.fixture(scope="module")
def split_1_29(folder: Path, end_model: EndModel) -> Iterator[SplitModel]:
    yield open_split(folder, (1, 30), torch.bfloat16, end=end_model)


@pytest.mark.parametrize("split", list(SPLITS))
def test_greedy_split_is_token_identical_to_generate(
    split: str,
    folder: Path,
    end_model: EndModel,
    prompts: dict[str, list[int]],
    reference_tokens: dict[str, list[int]],
) -> None:
    boundaries = SPLITS[split]
    model = open_split(folder, boundaries, torch.bfloat16, end=end_model if boundaries[0] == 1 else None)
    for name, prompt in prompts.items():
        tokens = model.greedy(f"{split}-{name}", prompt, NEW_TOKENS)
        assert tokens == reference_tokens[name], f"{name} through {split}"
        model.release(f"{split}-{name}")
    assert all(segment.sequence_count == 0 for segment in model.segments)


def test_reference_continues_past_eos(end_model: EndModel, reference_tokens: dict[str, list[int]]) -> None:
    """The comparison covers a full NEW_TOKENS per prompt, not just the text up to the first EOS."""
    assert all(len(tokens) == NEW_TOKENS for tokens in reference_tokens.values())
    assert "Paris" in end_model.tokenizer.decode(reference_tokens["capital"])


def test_chunked_prefill_gives_the_same_tokens(
    split_1_29: SplitModel,
    reference_model: PreTrainedModel,
    prompts: dict[str, list[int]],
    reference_tokens: dict[str, list[int]],
) -> None:
    """Prefill in 7-token chunks is token-identical to transformers prefilling in the same chunks.

    Against whole-prompt prefill it can differ after a while: in bf16 another
    chunking rounds differently and a near-tie (logit margin 0.25 or less) flips;
    transformers' own chunked prefill flips the same tokens. The short answer
    ("The capital of France is Paris.") is the same up to its EOS.
    """
    eos = split_1_29.end.eos_token_ids
    for name, prompt in prompts.items():
        assert len(prompt) > 14, "the prompt must span several 7-token chunks"
        tokens = split_1_29.greedy(f"chunked-{name}", prompt, NEW_TOKENS, chunk=7)
        split_1_29.release(f"chunked-{name}")
        assert tokens == reference_chunked_greedy(reference_model, prompt, chunk=7), name
        if name == "capital":
            answer = up_to_first_eos(reference_tokens[name], eos)
            assert tokens[: len(answer)] == answer, name


def teacher_forced_logits(
    model: SplitModel, sequence_ids: list[str], prompts: list[list[int]], continuations: list[list[int]]
) -> list[torch.Tensor]:
    """Prefill the prompts in one packed step, then feed each continuation one token per step, packed."""
    logits = model.step(sequence_ids, [0] * len(prompts), prompts)
    ends = torch.tensor([len(p) for p in prompts]).cumsum(0) - 1
    rows: list[list[torch.Tensor]] = [[logits[int(end)]] for end in ends]
    for step in range(len(continuations[0]) - 1):
        starts = [len(prompt) + step for prompt in prompts]
        logits = model.step(sequence_ids, starts, [[tokens[step]] for tokens in continuations])
        for index in range(len(prompts)):
            rows[index].append(logits[index])
    for sequence_id in sequence_ids:
        model.release(sequence_id)
    return [torch.stack(sequence_rows) for sequence_rows in rows]


def test_two_sequences_packed_in_one_step_match_each_alone(
    split_1_29: SplitModel, prompts: dict[str, list[int]], reference_tokens: dict[str, list[int]]
) -> None:
    """Packing changes nothing but bf16 rounding of the batched kernels.

    Packed prefill is bit-identical to prefilling alone. A decode step with two rows
    goes through other kernels than one with a single row (on AVX-512 the matmuls, on
    AVX2 the attention), so the logits differ by bf16 rounding (measured: at most 0.9
    on logits of magnitude ~35, mean 0.1); we assert that bound and that the greedy
    choice agrees wherever it is not a near-tie. Free-running answers can part at a
    near-tie, on some CPUs and not others: bit-identical output whatever shares a step
    is what ``batch_invariant`` promises, and is tested below. The float32 tiny models
    (test_architectures.py) check packing to 2e-4.
    """
    names = ["capital", "poem"]
    packed = teacher_forced_logits(
        split_1_29, ["pack-a", "pack-b"], [prompts[n] for n in names], [reference_tokens[n] for n in names]
    )
    for name, packed_logits in zip(names, packed, strict=True):
        alone = teacher_forced_logits(
            split_1_29, [f"alone-{name}"], [prompts[name]], [reference_tokens[name]]
        )[0]
        assert torch.equal(packed_logits[0], alone[0]), "packed prefill must equal prefill alone"
        difference = (packed_logits - alone).abs()
        assert difference.max() < 2.0 and difference.mean() < 0.25, name
        top_two = alone.topk(2, dim=-1).values
        clear = (top_two[:, 0] - top_two[:, 1]) > 1.0
        assert torch.equal(packed_logits.argmax(-1)[clear], alone.argmax(-1)[clear]), name


def test_replay_without_cache_reproduces_the_next_token(
    split_1_29: SplitModel,
    reference_model: PreTrainedModel,
    prompts: dict[str, list[int]],
    reference_tokens: dict[str, list[int]],
) -> None:
    """Feeding prompt + generated tokens again from position 0 into fresh caches equals transformers' forward.

    The replay is one prefill of the whole history, so it matches transformers' own
    forward over that history. Whether a prefill also reproduces the decode steps bit
    for bit depends on the CPU's attention kernels (not on AVX2); ``batch_invariant``
    makes it hold everywhere (next test).
    """
    eos = split_1_29.end.eos_token_ids
    prompt = prompts["explain"]
    answer = up_to_first_eos(reference_tokens["explain"], eos)
    history = prompt + answer[:-1]
    fresh = split_1_29.step(["replay-fresh"], [0], [history])
    with torch.inference_mode():
        expected = reference_model(torch.tensor([history])).logits[0].float()
    torch.testing.assert_close(fresh, expected, atol=0.25, rtol=0)  # measured identical
    assert torch.equal(fresh.argmax(-1), expected.argmax(-1))

    # The same sequence id restarted at position 0 overwrites its cache instead of appending to it.
    split_1_29.greedy("replay-same", prompt, 5)
    again = split_1_29.step(["replay-same"], [0], [history])
    torch.testing.assert_close(again, fresh, atol=0, rtol=0)
    split_1_29.release("replay-fresh")
    split_1_29.release("replay-same")


@pytest.fixture(scope="module")
def invariant_split(folder: Path) -> SplitModel:
    return open_split(folder, (1, 30), torch.bfloat16, batch_invariant=True)


def decode_alone_or_packed(
    model: SplitModel, name: str, prompt: list[int], new_tokens: int, beside: list[int] | None = None
) -> tuple[list[int], torch.Tensor]:
    """Greedy decode of ``prompt``, alone or packed with ``beside`` in every step; its tokens and logits."""
    ids, prompts = [name], [prompt]
    if beside is not None:
        ids, prompts = [name, f"{name}-neighbour"], [prompt, beside]
    logits = model.step(ids, [0] * len(ids), prompts)
    rows = [logits[len(prompt) - 1]]
    tokens = [int(rows[-1].argmax())]
    neighbour = [int(logits[-1].argmax())]
    while len(tokens) < new_tokens:
        starts = [len(prompt) + len(tokens) - 1, len(beside or []) + len(neighbour) - 1][: len(ids)]
        logits = model.step(ids, starts, [[tokens[-1]], [neighbour[-1]]][: len(ids)])
        rows.append(logits[0])
        tokens.append(int(logits[0].argmax()))
        neighbour.append(int(logits[-1].argmax()))
    for sequence_id in ids:
        model.release(sequence_id)
    return tokens, torch.stack(rows)


def test_batch_invariant_logits_do_not_depend_on_neighbours_chunks_or_replay(
    invariant_split: SplitModel, prompts: dict[str, list[int]]
) -> None:
    """``batch_invariant``: the same logits, bit for bit, alone, packed, chunked or replayed, on every CPU."""
    prompt = prompts["explain"]
    tokens, alone = decode_alone_or_packed(invariant_split, "inv-alone", prompt, 24)
    packed_tokens, packed = decode_alone_or_packed(
        invariant_split, "inv-packed", prompt, 24, beside=prompts["poem"]
    )
    assert packed_tokens == tokens and torch.equal(packed, alone)

    # A replay after a node loss: the whole history again from position 0, in one prefill or in chunks.
    history = prompt + tokens[:-1]
    replayed = invariant_split.step(["inv-replay"], [0], [history])[len(prompt) - 1 :]
    invariant_split.release("inv-replay")
    assert torch.equal(replayed, alone)
    chunked = [
        invariant_split.step(["inv-chunks"], [start], [history[start : start + 16]])
        for start in range(0, len(history), 16)
    ]
    invariant_split.release("inv-chunks")
    assert torch.equal(torch.cat(chunked)[len(prompt) - 1 :], alone)


def test_segment_refuses_a_step_that_skips_ahead(folder: Path, end_model: EndModel) -> None:
    segment = LayerSegment(end_model.source, 1, 2, torch.bfloat16, torch.device("cpu"))
    hidden = end_model.embed([1, 2, 3])
    with pytest.raises(UnknownSequenceError):
        segment.forward(hidden, SegmentBatch((SequenceId("never-seen"),), (5,), (3,)))
    segment.forward(hidden, SegmentBatch((SequenceId("s"),), (0,), (3,)))
    assert segment.sequence_count == 1
    with pytest.raises(UnknownSequenceError):
        segment.forward(hidden[:, :1], SegmentBatch((SequenceId("s"),), (4,), (1,)))
    segment.release(SequenceId("s"))
    assert segment.sequence_count == 0
    assert segment.cache_nbytes() == 0


def test_idle_caches_are_released_by_the_backstop(end_model: EndModel) -> None:
    segment = LayerSegment(end_model.source, 1, 2, torch.bfloat16, torch.device("cpu"))
    segment.forward(end_model.embed([1, 2]), SegmentBatch((SequenceId("idle"),), (0,), (2,)))
    assert segment.release_idle(idle_seconds=60.0) == []
    assert segment.sequence_count == 1
    assert segment.cache_nbytes() > 0
    assert segment.release_idle(idle_seconds=0.0) == [SequenceId("idle")]
    assert segment.sequence_count == 0
