"""Default mode: verified drafts compute exactly what plain one-row decode steps compute.

A verification step feeds a sequence's last token and its drafts as one
chunk marked as a decode run (a prefill chunk is not one: transformers'
chunked prefill computes its rows together, and so do we). Its rows must carry the same bits as the decode
steps they replace, or greedy output with speculation leaves transformers'
one-process output at near-ties. bf16 on AVX2 needs attention row by row
(SDPA over several query rows rounds differently); fp32 (and bf16 on
AVX-512) also rounds one row differently in the linear kernels, so the
segment runs the rows as one-row sub-steps there. Marked ``numerics``: the
suite reruns these on a second CPU kernel family.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from language_pipes.engine.generator import ModelGenerator
from language_pipes.engine.scheduler import Scheduler
from language_pipes.engine.speculation import SpeculationSettings
from language_pipes.engine.types import Finished, GenerationRequest, SamplingParams, TextDelta
from language_pipes.models.segment import SegmentBatch
from language_pipes.pipes.route import Route
from language_pipes.vocabulary import SequenceId
from support.tiny_models import build_tiny_model, open_split

pytestmark = pytest.mark.numerics
DTYPES = [torch.bfloat16, torch.float32]
RUN = 7  # the last token and six drafts
# Prompts that repeat themselves (drafts find matches) and one that does not.
PROMPTS = [
    [1, *range(10, 30), *range(10, 30), 11, 12, 13],
    [1, 40, 41, 42, 43, 44, 45, 40, 41, 42, 43],
    [1, 7, 99, 150, 3, 61, 88, 17, 120, 45],
]
NEW_TOKENS = 40


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model("llama", tmp_path_factory.mktemp("spec-numerics") / "llama")


def sid(name: str) -> SequenceId:
    return SequenceId(name.encode().hex().ljust(32, "0")[:32])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_a_decode_run_equals_its_decode_steps_bit_for_bit(folder: Path, dtype: torch.dtype) -> None:
    split = open_split(folder, (1, 4), dtype)
    end, segment = split.end, split.segments[0]
    tokens = torch.randint(3, 100, (200,), generator=torch.Generator().manual_seed(0)).tolist()
    for trial, past in enumerate(range(20, 160, 7)):  # near-ties show up at some lengths only
        prompt, run_tokens = tokens[:past], tokens[past : past + RUN]
        plain, verifying = sid(f"p{trial}"), sid(f"v{trial}")
        rows = []
        for name, feed in ((plain, None), (verifying, run_tokens)):
            segment.forward(end.embed(prompt), SegmentBatch((name,), (0,), (past,)))
            if feed is not None:
                verified = segment.forward(end.embed(feed), SegmentBatch((name,), (past,), (RUN,), (True,)))
        for offset, token in enumerate(run_tokens):
            rows.append(segment.forward(end.embed([token]), SegmentBatch((plain,), (past + offset,), (1,))))
        assert torch.equal(verified, torch.cat(rows, dim=1)), f"{past} cached tokens"
        assert segment._caches[verifying].length == past + RUN
        segment.release(plain)
        segment.release(verifying)


def test_decode_runs_beside_a_prefill_chunk_keep_every_row_in_place(folder: Path) -> None:
    """fp32 splits a step with runs into one-row sub-steps: each row's output goes back where it was."""
    split = open_split(folder, (1, 4), torch.float32)
    end, segment = split.end, split.segments[0]
    assert segment.split_decode_runs  # fp32 linears round a lone row differently on every CPU kind here
    short, long, prefill = sid("short"), sid("long"), sid("prefill")
    for name in (short, long):
        segment.forward(end.embed(PROMPTS[0]), SegmentBatch((name,), (0,), (len(PROMPTS[0]),)))
    feeds = [[5, 6, 7], [8, 9, 10, 11, 12], PROMPTS[1]]
    starts = (len(PROMPTS[0]),) * 2 + (0,)
    batch = SegmentBatch((short, long, prefill), starts, tuple(map(len, feeds)), (True, True, False))
    packed = segment.forward(end.embed([t for feed in feeds for t in feed]), batch)
    offsets = [0, 3, 8]
    for name, feed, offset in zip((short, long, prefill), feeds, offsets, strict=True):
        segment.release(name)
        if name != prefill:
            segment.forward(end.embed(PROMPTS[0]), SegmentBatch((name,), (0,), (len(PROMPTS[0]),)))
        start = 0 if name == prefill else len(PROMPTS[0])
        alone = segment.forward(
            end.embed(feed), SegmentBatch((name,), (start,), (len(feed),), (name != prefill,))
        )
        torch.testing.assert_close(packed[:, offset : offset + len(feed)], alone, rtol=1e-5, atol=1e-5)
        assert segment._caches[name].length == start + len(feed)
        segment.release(name)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_verified_logits_equal_one_row_head_calls(folder: Path, dtype: torch.dtype) -> None:
    end = open_split(folder, (1, 4), dtype).end
    hidden = torch.randn(RUN, end.config.hidden_size, generator=torch.Generator().manual_seed(1)).to(dtype)
    verified = end.logits(hidden, decode_rows=True)
    assert torch.equal(verified, torch.cat([end.logits(hidden[row : row + 1]) for row in range(RUN)]))


def generate(generator: ModelGenerator, prompt: list[int]) -> list[int]:
    """A lone greedy request's tokens."""
    request = GenerationRequest(list(prompt), SamplingParams(temperature=0.0), max_new_tokens=NEW_TOKENS)

    async def collect() -> list[int]:
        tokens: list[int] = []
        async for event in generator.generate(request):
            if isinstance(event, TextDelta):
                tokens += event.token_ids
            elif isinstance(event, Finished):
                assert event.reason != "error", event.error
        return tokens

    return asyncio.run(asyncio.wait_for(collect(), 120))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_speculating_greedy_output_equals_transformers_in_one_process(
    folder: Path, dtype: torch.dtype
) -> None:
    split = open_split(folder, (1, 2, 4), dtype)
    route = Route(split.segments)
    scheduler = Scheduler(split.end, lambda: route, speculation=SpeculationSettings(True, 6))
    scheduler.start()
    try:
        generator = ModelGenerator(split.end, scheduler)
        got = [generate(generator, prompt) for prompt in PROMPTS]
    finally:
        scheduler.stop()
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    for prompt, tokens in zip(PROMPTS, got, strict=True):
        with torch.inference_mode():
            output = reference.generate(
                torch.tensor([prompt]), do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=0
            )
        expected = [t for t in output[0, len(prompt) :].tolist() if t not in split.end.eos_token_ids]
        assert tokens == expected
    assert scheduler.tokens_accepted > 0  # it did speculate
