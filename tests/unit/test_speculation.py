"""Speculative decoding (engine/speculation.py): drafts, acceptance, rollback, equivalence on tiny models.

The acceptance rule, the prompt-lookup index and the K controller are tested
on their own; then a tiny random llama runs through the real scheduler and
segments with speculation on and off: greedy and seeded sampled output are
token-identical in batch-invariant mode, under load and across a replay
after a route failure, and every rolled-back position leaves the caches as a
plain decode would.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from language_pipes.engine.detokenize import IncrementalDetokenizer
from language_pipes.engine.generator import ModelGenerator
from language_pipes.engine.sampling import make_generator, pick_token
from language_pipes.engine.scheduler import Scheduler
from language_pipes.engine.sequence import Sequence
from language_pipes.engine.speculation import (
    DraftControl,
    PromptLookup,
    SpeculationSettings,
    accept_longest_prefix,
    supports_speculation,
)
from language_pipes.engine.types import Finished, GenerationRequest, SamplingParams, TextDelta
from language_pipes.models.partial import ModelSource
from language_pipes.models.segment import LayerSegment, SegmentBatch
from language_pipes.pipes.frames import StepHeader, decode_step, encode_step
from language_pipes.pipes.route import Route
from language_pipes.vocabulary import SequenceId
from support.tiny_models import SplitModel, build_tiny_model, open_split, tiny_config

GREEDY = SamplingParams(temperature=0.0)
# Prompts that repeat themselves (drafts find matches) and one that does not.
PROMPTS = [
    [1, *range(10, 30), *range(10, 30), 11, 12, 13],
    [1, 40, 41, 42, 43, 44, 45, 40, 41, 42, 43],
    [1, 7, 99, 150, 3, 61, 88, 17, 120, 45],
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model("llama", tmp_path_factory.mktemp("spec") / "llama")


@pytest.fixture(scope="module")
def split(folder: Path) -> SplitModel:
    return open_split(folder, (1, 2, 4), torch.bfloat16, batch_invariant=True)


# -- the pieces on their own ----------------------------------------------------------------------


def test_prompt_lookup_offers_what_followed_the_tail_before() -> None:
    lookup = PromptLookup()
    text = [5, 6, 7, 8, 9, 1, 2, 5, 6, 7]
    assert lookup.propose(text, 3) == [8, 9, 1]
    text += [8, 9]  # extended in place, as a sequence's tokens are: the index catches up
    assert lookup.propose(text, 2) == [1, 2]
    assert lookup.propose([3, 4, 5, 6], 4) == []
    assert PromptLookup().propose([1, 2, 3, 1, 2], 8) == [3, 1, 2]  # never past the known tokens


def test_incremental_index_proposes_what_a_fresh_index_proposes() -> None:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 6, (300,), generator=generator).tolist()
    growing = PromptLookup()
    for end in range(3, len(tokens)):
        assert growing.propose(tokens[:end], 5) == PromptLookup().propose(tokens[:end], 5), end


def test_k_grows_on_full_acceptance_shrinks_on_partial_and_backs_off_on_failures() -> None:
    control = DraftControl(limit=6)
    assert control.wanted() == 2
    control.record(2, 2)
    control.record(4, 4)
    assert control.wanted() == 6  # capped at the limit
    control.record(6, 3)
    assert control.wanted() == 4
    control.record(4, 0)
    assert control.wanted() == 1  # one failure: K drops to 1, no pause yet
    control.record(1, 0)
    assert [control.wanted() for _ in range(5)] == [0, 0, 0, 0, 1]  # two in a row: a pause of 4 steps
    assert (control.drafted, control.accepted) == (17, 9)


def rows_for(tokens: list[int], vocab: int = 8) -> torch.Tensor:
    """Logits rows whose argmax is each of ``tokens``."""
    rows = torch.zeros(len(tokens), vocab)
    for row, token in enumerate(tokens):
        rows[row, token] = 5.0
    return rows


def greedy_pick(row: torch.Tensor) -> int:
    return pick_token(row, GREEDY, [], None, None)


@pytest.mark.parametrize(
    ("draft", "model", "accepted", "emitted"),
    [
        ([1, 2, 3], [1, 2, 3, 4], 3, [1, 2, 3, 4]),  # all accepted, plus the model's next token
        ([1, 2, 3], [1, 5, 3, 4], 1, [1, 5]),  # the first disagreement ends the step with the model's token
        ([1, 2, 3], [6, 2, 3, 4], 0, [6]),
        ([], [7], 0, [7]),  # no draft: a plain decode step
    ],
)
def test_greedy_acceptance_keeps_the_longest_agreeing_prefix(
    draft: list[int], model: list[int], accepted: int, emitted: list[int]
) -> None:
    seen: list[int] = []
    assert (
        accept_longest_prefix(draft, rows_for(model), greedy_pick, lambda t: seen.append(t) or True)
        == accepted
    )
    assert seen == emitted


def test_acceptance_stops_when_the_sequence_finishes() -> None:
    seen: list[int] = []
    accepted = accept_longest_prefix(
        [1, 2, 3], rows_for([1, 2, 3, 4]), greedy_pick, lambda t: seen.append(t) or t != 2
    )
    assert (accepted, seen) == (2, [1, 2])


def test_sampled_acceptance_leaves_the_distribution_unchanged() -> None:
    """Chi-square: the first token emitted with a draft follows the model's distribution (p = 0.001)."""
    params = SamplingParams(temperature=1.0, seed=0)
    logits = torch.tensor([1.5, 0.2, -0.5, 1.0, 0.0, -1.0])
    probabilities = torch.softmax(logits, -1)
    random = make_generator(7)
    draws = 2500
    counts: Counter[int] = Counter()
    for _ in range(draws):
        emitted: list[int] = []
        accept_longest_prefix(
            [3, 1],
            logits.expand(3, -1),
            lambda row: pick_token(row, params, [], None, random),
            lambda t, emitted=emitted: emitted.append(t) or False,
        )
        counts[emitted[0]] += 1
    expected = probabilities * draws
    statistic = sum((counts[i] - float(expected[i])) ** 2 / float(expected[i]) for i in range(6))
    assert statistic < 20.5, (statistic, counts)  # chi-square, 5 degrees of freedom, p = 0.001


def test_models_with_recurrent_layers_do_not_speculate() -> None:
    assert supports_speculation(tiny_config("llama"))
    assert not supports_speculation(tiny_config("qwen3_5_text"))


# -- rollback in the caches -----------------------------------------------------------------------


@pytest.mark.parametrize("accepted", range(5))
def test_rollback_at_every_position_continues_like_a_plain_decode(split: SplitModel, accepted: int) -> None:
    """A 4-token draft verified in one step, ``accepted`` of them kept: the next step matches a plain run."""
    prompt, drafted, correction = PROMPTS[2], [30, 31, 32, 33], 90
    plain = f"{accepted:02d}" * 16
    speculative = f"{accepted + 10:02d}" * 16
    split.step([plain], [0], [prompt])
    for offset, token in enumerate(drafted[:accepted]):
        split.step([plain], [len(prompt) + offset], [[token]])
    expected = split.step([plain], [len(prompt) + accepted], [[correction]])

    split.step([speculative], [0], [prompt[:-1]])
    split.step([speculative], [len(prompt) - 1], [[prompt[-1], *drafted]])  # the verifying step
    got = split.step([speculative], [len(prompt) + accepted], [[correction]])  # starts at the first rejected
    assert torch.equal(got, expected)
    for segment in (split.end.local_layers, *split.segments):
        assert segment._caches[speculative].length == len(prompt) + accepted + 1  # type: ignore[index]
    split.release(plain)
    split.release(speculative)


# -- through the scheduler -------------------------------------------------------------------------


class FailsOnce(Route):
    """A route whose ``fail_at``-th step raises, like a hop lost mid-generation."""

    def __init__(self, segments: list[LayerSegment], fail_at: int) -> None:
        super().__init__(segments)
        self.steps = 0
        self.fail_at = fail_at
        self.failed = False

    def forward(self, hidden: torch.Tensor, batch: SegmentBatch) -> torch.Tensor:
        self.steps += 1
        if self.steps == self.fail_at:
            self.failed = True
            raise ConnectionError("hop lost")
        return super().forward(hidden, batch)


def run(
    scheduler: Scheduler, generator: ModelGenerator, requests: list[GenerationRequest]
) -> list[list[int]]:
    async def one(request: GenerationRequest) -> list[int]:
        tokens: list[int] = []
        async for event in generator.generate(request):
            if isinstance(event, TextDelta):
                tokens += event.token_ids
            elif isinstance(event, Finished):
                assert event.reason != "error", event.error
        return tokens

    async def every() -> list[list[int]]:
        return await asyncio.wait_for(asyncio.gather(*(one(r) for r in requests)), 120)

    return asyncio.run(every())


@pytest.fixture(scope="module")
def engines(folder: Path) -> Iterator[dict[str, tuple[Scheduler, ModelGenerator, list[Route]]]]:
    """The same split behind a plain scheduler, a speculating one, and a speculating one whose route fails."""
    split = open_split(folder, (1, 2, 4), torch.bfloat16, batch_invariant=True)
    source = ModelSource.open(folder)
    made: dict[str, tuple[Scheduler, ModelGenerator, list[Route]]] = {}
    for name, speculation in (("plain", False), ("speculating", True), ("failing", True)):
        routes: list[Route] = [Route(split.segments)]
        if name == "failing":
            spare = [LayerSegment(source, 1, 4, torch.bfloat16, torch.device("cpu"), True)]
            routes = [FailsOnce(split.segments, fail_at=12), Route(spare)]

        def choose(routes: list[Route] = routes) -> Route:
            return routes[-1] if getattr(routes[0], "failed", False) else routes[0]

        scheduler = Scheduler(
            split.end,
            choose,
            prefill_chunk=8,
            aligned_prefill=True,
            speculation=SpeculationSettings(enabled=speculation, max_tokens=4),
        )
        scheduler.start()
        made[name] = (scheduler, ModelGenerator(split.end, scheduler), routes)
    yield made
    for scheduler, _, _ in made.values():
        scheduler.stop()


def test_a_step_that_decodes_a_busy_batch_drafts_for_no_one(split: SplitModel) -> None:
    scheduler = Scheduler(split.end, lambda: None, speculation=SpeculationSettings(True, 4, busy_batch=4))

    def decoding(count: int) -> list[Sequence]:
        sequences = []
        for index in range(count):
            sequence = Sequence(
                SequenceId(f"{index:032x}"),
                GenerationRequest(prompt_token_ids=list(PROMPTS[0])),
                emit=lambda event: None,
                detokenizer=IncrementalDetokenizer(split.end.tokenizer),
            )
            sequence.fed = len(PROMPTS[0]) - 1  # prefilled: the last prompt token is next
            sequences.append(sequence)
        return sequences

    assert [drafted for _, _, drafted in scheduler._plan(decoding(3))] == [2, 2, 2]
    assert [drafted for _, _, drafted in scheduler._plan(decoding(4))] == [0, 0, 0, 0]


def requests(sampling: SamplingParams, tokens: int = 28) -> list[GenerationRequest]:
    return [
        GenerationRequest(prompt_token_ids=list(p), sampling=sampling, max_new_tokens=tokens) for p in PROMPTS
    ]


def test_greedy_output_is_identical_with_speculation_alone_and_under_load(engines: dict) -> None:
    plain = [run(*engines["plain"][:2], [r])[0] for r in requests(GREEDY)]
    scheduler, generator, _ = engines["speculating"]
    alone = [run(scheduler, generator, [r])[0] for r in requests(GREEDY)]
    drafted, accepted = scheduler.tokens_drafted, scheduler.tokens_accepted
    assert alone == plain
    assert drafted > 0 and 0 < accepted <= drafted  # it did speculate, and some drafts were right
    assert run(scheduler, generator, requests(GREEDY)) == plain  # three at once (below the busy batch)


def test_seeded_sampling_is_identical_with_speculation(engines: dict) -> None:
    sampled = [SamplingParams(temperature=0.9, top_p=0.95, seed=1)]
    for params in sampled:
        plain = run(*engines["plain"][:2], requests(params))
        assert run(*engines["speculating"][:2], requests(params)) == plain


def test_a_replay_after_a_lost_hop_feeds_only_accepted_tokens_and_continues_identically(
    engines: dict,
) -> None:
    scheduler, generator, routes = engines["failing"]
    request = requests(GREEDY, tokens=48)[0]
    expected = run(*engines["plain"][:2], [request])[0]
    assert run(scheduler, generator, [request])[0] == expected
    assert routes[0].steps >= 12 and scheduler.tokens_accepted > 0  # it failed mid-generation, after drafts
    spare = routes[1].segments[0]
    deadline = time.monotonic() + 10
    while spare.sequence_count and time.monotonic() < deadline:  # freed just after the last token
        time.sleep(0.01)
    assert spare.sequence_count == 0


def test_finished_reports_drafted_and_accepted_tokens(engines: dict) -> None:
    """The Finished event counts every draft, the last step's too, as the scheduler's totals do."""
    scheduler, generator, _ = engines["speculating"]
    before = (scheduler.tokens_drafted, scheduler.tokens_accepted)

    async def finished() -> Finished:
        async for event in generator.generate(requests(GREEDY)[0]):
            if isinstance(event, Finished):
                return event
        raise AssertionError("no Finished event")

    event = asyncio.run(finished())
    assert event.drafted_tokens > 0 and 0 < event.accepted_tokens <= event.drafted_tokens
    counted = (event.drafted_tokens + before[0], event.accepted_tokens + before[1])
    deadline = time.monotonic() + 10
    while (scheduler.tokens_drafted, scheduler.tokens_accepted) != counted and time.monotonic() < deadline:
        time.sleep(0.01)  # the totals are added just after the last token is emitted
    assert (scheduler.tokens_drafted, scheduler.tokens_accepted) == counted


def test_a_step_frame_carries_which_sequences_are_decode_runs() -> None:
    """Layer nodes learn from the step header which rows verify drafts (computed as decode steps)."""
    ids = (SequenceId("ab" * 16), SequenceId("cd" * 16))
    for runs in ((False, True), ()):
        batch = SegmentBatch(ids, (0, 40), (12, 7), decode_runs=runs)
        header = StepHeader("m", 1, 4, torch.bfloat16, 64, batch)
        assert decode_step(encode_step(header)).batch == batch
