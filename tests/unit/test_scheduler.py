"""The continuous-batching scheduler with the real default model: concurrency, limits, stops, cancellation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from language_pipes.engine.generator import ModelGenerator
from language_pipes.engine.scheduler import Scheduler
from language_pipes.engine.types import (
    Finished,
    GenerationEvent,
    GenerationRequest,
    SamplingParams,
    TextDelta,
)
from language_pipes.models.end_model import EndModel
from language_pipes.models.segment import LayerSegment, SegmentBatch
from language_pipes.pipes.route import Route
from support.tiny_models import default_model_folder, open_split

GREEDY = SamplingParams(temperature=0.0)
SAMPLED = SamplingParams(temperature=0.8, seed=3)
CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]


@dataclass
class Engine:
    end: EndModel
    segment: LayerSegment
    scheduler: Scheduler
    generator: ModelGenerator


@pytest.fixture(scope="module")
def engine(model_store_dir: Path) -> Iterator[Engine]:
    torch.set_num_threads(1)
    folder = default_model_folder(model_store_dir)
    split = open_split(folder, (1, 30), torch.bfloat16)
    route = Route(split.segments)
    scheduler = Scheduler(split.end, lambda: route, prefill_chunk=16)
    scheduler.start()
    try:
        yield Engine(split.end, split.segments[0], scheduler, ModelGenerator(split.end, scheduler))
    finally:
        scheduler.stop()


@dataclass
class Outcome:
    text: str
    finished: Finished
    deltas: list[TextDelta]


async def collect(events: AsyncIterator[GenerationEvent]) -> Outcome:
    deltas: list[TextDelta] = []
    async for event in events:
        if isinstance(event, Finished):
            return Outcome("".join(d.text for d in deltas), event, deltas)
        deltas.append(event)
    raise AssertionError("the stream ended without a Finished event")


def request(engine: Engine, chat: list[dict[str, object]], **fields: object) -> GenerationRequest:
    return GenerationRequest(prompt_token_ids=engine.generator.encode_chat(chat), **fields)  # type: ignore[arg-type]


def no_caches_left(engine: Engine) -> bool:
    return engine.segment.sequence_count == 0 and engine.end.local_layers.sequence_count == 0


def wait_for(condition: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_greedy_request_alone_matches_the_split_model(engine: Engine) -> None:
    """The answer to a short question ends on EOS: finish reason stop, EOS not counted or shown."""
    outcome = asyncio.run(collect(engine.generator.generate(request(engine, CAPITAL, sampling=GREEDY))))
    assert outcome.text == "The capital of France is Paris."
    assert outcome.finished.reason == "stop"
    assert outcome.finished.completion_tokens == 7
    assert outcome.finished.prompt_tokens == len(engine.generator.encode_chat(CAPITAL))
    assert wait_for(lambda: no_caches_left(engine))


def test_concurrent_requests_all_finish_with_the_right_reasons(engine: Engine) -> None:
    async def run_all() -> list[Outcome]:
        return await asyncio.gather(
            collect(engine.generator.generate(request(engine, STORY, sampling=GREEDY, max_new_tokens=5))),
            collect(engine.generator.generate(request(engine, STORY, sampling=GREEDY, max_new_tokens=23))),
            collect(engine.generator.generate(request(engine, CAPITAL, sampling=GREEDY, max_new_tokens=40))),
            collect(
                engine.generator.generate(
                    request(engine, CAPITAL, sampling=GREEDY, max_new_tokens=40, stop=("Paris", "London"))
                )
            ),
            collect(
                engine.generator.generate(
                    request(
                        engine, STORY, sampling=SamplingParams(temperature=0.8, seed=3), max_new_tokens=17
                    )
                )
            ),
        )

    short, longer, eos, stopped, sampled = asyncio.run(run_all())
    assert (short.finished.reason, short.finished.completion_tokens) == ("length", 5)
    assert (longer.finished.reason, longer.finished.completion_tokens) == ("length", 23)
    assert longer.text.startswith(short.text[:10])
    assert (eos.finished.reason, eos.text) == ("stop", "The capital of France is Paris.")
    assert stopped.finished.reason == "stop"
    assert stopped.text == "The capital of France is "  # the stop string is not part of the output
    assert (sampled.finished.reason, sampled.finished.completion_tokens) == ("length", 17)
    assert wait_for(lambda: no_caches_left(engine) and engine.scheduler.active_count == 0)


def test_requests_are_decoded_together_not_queued(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four requests at once share forward passes: far fewer than four times one request's, up to 4 rows each.

    What batching buys in wall-clock time depends on the CPU (bf16 matmul is native on
    AVX-512 and emulated on AVX2), so this counts forwards and the sequences in each.
    """
    steps: list[tuple[str, ...]] = []
    forward = engine.segment.forward

    def recording(hidden: torch.Tensor, batch: SegmentBatch) -> torch.Tensor:
        steps.append(batch.sequence_ids)
        return forward(hidden, batch)

    monkeypatch.setattr(engine.segment, "forward", recording)

    def forwards(count: int) -> list[tuple[str, ...]]:
        steps.clear()

        async def together() -> None:
            await asyncio.gather(
                *(
                    collect(
                        engine.generator.generate(request(engine, STORY, sampling=GREEDY, max_new_tokens=24))
                    )
                    for _ in range(count)
                )
            )

        asyncio.run(together())
        return list(steps)

    one, four = forwards(1), forwards(4)
    assert len({sequence for step in four for sequence in step}) == 4
    assert len(four) < 1.5 * len(one), f"1 request {len(one)} forwards, 4 requests {len(four)}"
    assert sum(len(step) == 4 for step in four) >= 20, "the four decode steps were not shared"


def test_same_seed_same_output(engine: Engine) -> None:
    def sampled(seed: int) -> str:
        params = SamplingParams(temperature=1.0, top_p=0.95, seed=seed)
        return asyncio.run(
            collect(engine.generator.generate(request(engine, STORY, sampling=params, max_new_tokens=20)))
        ).text

    first = sampled(11)
    assert sampled(11) == first
    assert sampled(12) != first


def test_cancelled_request_is_dropped_and_its_caches_released(engine: Engine) -> None:
    async def scenario() -> tuple[int, Outcome]:
        keeper_task = asyncio.ensure_future(
            collect(engine.generator.generate(request(engine, STORY, sampling=GREEDY, max_new_tokens=60)))
        )
        stream = engine.generator.generate(request(engine, STORY, sampling=GREEDY, max_new_tokens=500))
        seen = 0
        async for event in stream:
            assert isinstance(event, TextDelta)
            seen += 1
            if seen == 3:
                break
        assert engine.segment.sequence_count == 2
        await stream.aclose()  # what the API does when a client disconnects
        cancelled_at = time.monotonic()
        while engine.segment.sequence_count != 1:
            assert time.monotonic() - cancelled_at < 2.0, "the cancelled sequence kept its cache"
            await asyncio.sleep(0.005)
        assert engine.end.local_layers.sequence_count == 1
        return engine.scheduler.active_count, await keeper_task

    active_after_cancel, keeper = asyncio.run(scenario())
    assert active_after_cancel == 1
    assert (keeper.finished.reason, keeper.finished.completion_tokens) == ("length", 60)
    assert wait_for(lambda: no_caches_left(engine) and engine.scheduler.active_count == 0)


def test_long_prompt_is_prefilled_in_chunks_while_others_decode(engine: Engine) -> None:
    """A prompt many chunks long joins a running decode; both finish and the long one is right."""
    long_chat = [{"role": "user", "content": "Repeat after me: " + "the quick brown fox " * 30}]
    long_request = request(engine, long_chat, sampling=GREEDY, max_new_tokens=8)
    assert len(long_request.prompt_token_ids) > 8 * engine.scheduler.prefill_chunk
    split = open_split(engine.end.source.folder, (1, 30), torch.bfloat16, end=engine.end)

    async def scenario() -> tuple[Outcome, Outcome]:
        running = asyncio.ensure_future(
            collect(engine.generator.generate(request(engine, STORY, sampling=GREEDY, max_new_tokens=40)))
        )
        await asyncio.sleep(0.2)
        joined = await collect(engine.generator.generate(long_request))
        return joined, await running

    joined, running = asyncio.run(scenario())
    assert (running.finished.reason, running.finished.completion_tokens) == ("length", 40)
    assert joined.finished.completion_tokens <= 8
    expected = split.greedy("chunked", long_request.prompt_token_ids, 8, chunk=engine.scheduler.prefill_chunk)
    split.release("chunked")
    eos = engine.end.eos_token_ids
    answer = [t for t in expected[: joined.finished.completion_tokens] if t not in eos]
    assert joined.text == engine.end.tokenizer.decode(answer, skip_special_tokens=True)


# -- failures stay with the request they belong to; lanes survive anything ------------------------


class BrokenGrammar:
    """A constraint that fails on its ``fail_at``-th use, like a grammar engine bug for one request."""

    def __init__(self, fail_at: int) -> None:
        self.calls = 0
        self.fail_at = fail_at

    def allowed_tokens(self, vocab_size: int) -> torch.Tensor | None:
        self.calls += 1
        if self.calls >= self.fail_at:
            raise RuntimeError("grammar engine bug")
        return None

    def accept(self, token_id: int) -> None:
        return None

    def is_finished(self) -> bool:
        return False


def run_together(engine: Engine, *requests: GenerationRequest, timeout: float = 60.0) -> list[Outcome]:
    async def run_all() -> list[Outcome]:
        streams = (collect(engine.generator.generate(r)) for r in requests)
        return await asyncio.wait_for(asyncio.gather(*streams), timeout)

    return asyncio.run(run_all())


def test_a_vanishing_temperature_is_greedy_and_fails_no_one(engine: Engine) -> None:
    """temperature = 1e-40 once made softmax NaN, and the error replayed and failed the whole route."""
    tiny, other = run_together(
        engine,
        request(engine, CAPITAL, sampling=SamplingParams(temperature=1e-40), max_new_tokens=12),
        request(engine, CAPITAL, sampling=GREEDY, max_new_tokens=3),
    )
    assert (tiny.finished.reason, tiny.text) == ("stop", "The capital of France is Paris.")
    assert (other.finished.reason, other.finished.completion_tokens) == ("length", 3)


def test_a_failing_grammar_ends_its_own_sequence_and_no_other(engine: Engine) -> None:
    (alone,) = run_together(engine, request(engine, CAPITAL, sampling=GREEDY, max_new_tokens=4))
    broken, other = run_together(
        engine,
        request(engine, CAPITAL, sampling=GREEDY, max_new_tokens=20, constraint=BrokenGrammar(fail_at=2)),
        request(engine, CAPITAL, sampling=GREEDY, max_new_tokens=4),
    )
    assert broken.finished.reason == "error"
    assert broken.finished.failure == "internal"  # the API answers 500
    assert broken.finished.completion_tokens == 1  # it failed on its second token, not after replays
    assert (other.finished.reason, other.text) == ("length", alone.text)
    assert wait_for(lambda: no_caches_left(engine) and engine.scheduler.active_count == 0)


def test_a_failure_in_route_planning_fails_that_request_and_the_lane_goes_on(engine: Engine) -> None:
    route = Route([engine.segment])
    calls = {"count": 0}

    def flaky_route() -> Route | None:
        calls["count"] += 1
        if calls["count"] == 1:
            raise RuntimeError("route planning bug")
        return route

    scheduler = Scheduler(engine.end, flaky_route, prefill_chunk=16)
    scheduler.start()
    try:
        flaky = Engine(engine.end, engine.segment, scheduler, ModelGenerator(engine.end, scheduler))
        (first,) = run_together(flaky, request(flaky, CAPITAL, sampling=GREEDY), timeout=10)
        assert (first.finished.reason, first.finished.failure) == ("error", "unavailable")
        (second,) = run_together(flaky, request(flaky, CAPITAL, sampling=GREEDY), timeout=30)
        assert (second.finished.reason, second.text) == ("stop", "The capital of France is Paris.")
    finally:
        scheduler.stop()


class ReleaseFailsOnce(Route):
    """A route whose first release raises (a transport bug), after the request it frees has finished."""

    def __init__(self, segments: list[LayerSegment]) -> None:
        super().__init__(segments)
        self.failed = False

    def release(self, sequence_id: str) -> None:  # type: ignore[override]
        super().release(sequence_id)  # type: ignore[arg-type]
        if not self.failed:
            self.failed = True
            raise RuntimeError("release bug")


def test_a_failure_while_freeing_a_finished_sequence_does_not_end_the_lane(engine: Engine) -> None:
    route = ReleaseFailsOnce([engine.segment])
    scheduler = Scheduler(engine.end, lambda: route, prefill_chunk=16)
    scheduler.start()
    try:
        broken = Engine(engine.end, engine.segment, scheduler, ModelGenerator(engine.end, scheduler))
        for _ in range(2):
            (outcome,) = run_together(broken, request(broken, CAPITAL, sampling=GREEDY), timeout=30)
            assert (outcome.finished.reason, outcome.text) == ("stop", "The capital of France is Paris.")
        assert route.failed
    finally:
        scheduler.stop()
