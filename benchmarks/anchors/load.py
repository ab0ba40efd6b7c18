"""The client load every served anchor gets: streamed chat completions through the OpenAI SDK.

One module so that every server (this project, transformers serve, Language Pipes 2.5.0,
llama.cpp) is driven by exactly the same requests and timed the same way:
- TTFT: request sent -> first content token received;
- TPOT (decode ms/token): time after the first token / (completion tokens - 1);
- aggregate tok/s: completion tokens of N concurrent streams / wall time of the batch;
- long-prompt TTFT: a ~2,000-token prompt on an idle server, then while 8 streams decode.

Every prompt starts with a unique tag so no server can answer from a prefix cache.
Completion tokens come from the stream's ``usage`` when the server sends it, otherwise from
re-tokenizing the streamed text with the model's tokenizer.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from openai import AsyncOpenAI

DECODE_PROMPT = "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle."
LONG_PROMPT_TOKENS = 2000
BACKGROUND_STREAMS = 8

TokenCounter = Callable[[str], int]


@dataclass(frozen=True)
class StreamOutcome:
    """Timing of one streamed completion; ``error`` is set when it failed."""

    ttft_s: float
    total_s: float
    completion_tokens: int
    prompt_tokens: int | None
    error: str | None = None

    @property
    def tpot_s(self) -> float | None:
        decode_tokens = self.completion_tokens - 1
        if self.error or decode_tokens <= 0:
            return None
        return (self.total_s - self.ttft_s) / decode_tokens


@dataclass(frozen=True)
class LoadPlan:
    """How much load to apply: completion length, concurrency levels, repeats of the single stream."""

    tokens: int
    concurrency: tuple[int, ...]
    single_runs: int
    background_tokens: int
    phase_timeout_s: float


@dataclass
class LoadClient:
    """Sends the suite's requests to one OpenAI-compatible endpoint."""

    base_url: str
    model: str
    count_tokens: TokenCounter
    long_prompt_body: str
    tags: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.client = AsyncOpenAI(base_url=self.base_url, api_key="bench", timeout=900, max_retries=0)

    async def stream(
        self, prompt: str, max_tokens: int, started: asyncio.Event | None = None
    ) -> StreamOutcome:
        """One streamed chat completion at temperature 0, timed from the moment it is sent."""
        content = f"[request {next(self.tags)}] {prompt}"
        begin = time.perf_counter()
        first: float | None = None
        pieces: list[str] = []
        usage_tokens: int | None = None
        prompt_tokens: int | None = None
        try:
            response = await self.client.chat.completions.create(
                model=self.model,
                messages=[{"role": "user", "content": content}],
                max_tokens=max_tokens,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
            async with response:
                async for chunk in response:
                    text = chunk.choices[0].delta.content if chunk.choices else None
                    if text:
                        if first is None:
                            first = time.perf_counter()
                            if started is not None:
                                started.set()
                        pieces.append(text)
                    if chunk.usage is not None:
                        usage_tokens = chunk.usage.completion_tokens
                        prompt_tokens = chunk.usage.prompt_tokens
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - any client/server failure is a measured outcome, not a crash
            end = time.perf_counter()
            return StreamOutcome(
                (first or end) - begin, end - begin, 0, None, f"{type(error).__name__}: {error}"
            )
        end = time.perf_counter()
        if first is None:
            # HTTP 200 with no content at all (Language Pipes 2.5.0 sends errors that way): a failed request
            return StreamOutcome(end - begin, end - begin, 0, None, "stream ended without any content")
        tokens = usage_tokens if usage_tokens else self.count_tokens("".join(pieces))
        return StreamOutcome(first - begin, end - begin, tokens, prompt_tokens)

    async def close(self) -> None:
        await self.client.close()


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _errors(outcomes: list[StreamOutcome]) -> list[str]:
    return sorted({o.error for o in outcomes if o.error})


async def single_stream(client: LoadClient, plan: LoadPlan) -> dict[str, object]:
    outcomes = [await client.stream(DECODE_PROMPT, plan.tokens) for _ in range(plan.single_runs)]
    good = [o for o in outcomes if not o.error]
    tpots = [t for t in (o.tpot_s for o in good) if t is not None]
    return {
        "ttft_s": _median([o.ttft_s for o in good]),
        "tpot_ms": (_median(tpots) or 0) * 1000 if tpots else None,
        "completion_tokens": [o.completion_tokens for o in outcomes],
        "errors": _errors(outcomes),
    }


async def concurrent_streams(client: LoadClient, plan: LoadPlan, streams: int) -> dict[str, object]:
    begin = time.perf_counter()
    outcomes = list(
        await asyncio.gather(*(client.stream(DECODE_PROMPT, plan.tokens) for _ in range(streams)))
    )
    wall = time.perf_counter() - begin
    good = [o for o in outcomes if not o.error]
    tpots = [t for t in (o.tpot_s for o in good) if t is not None]
    return {
        "aggregate_tok_s": sum(o.completion_tokens for o in good) / wall,
        "wall_s": wall,
        "ttft_p50_s": _median([o.ttft_s for o in good]),
        "tpot_p50_ms": _median(tpots) * 1000 if tpots else None,
        "completed": len(good),
        "errors": _errors(outcomes),
    }


async def long_prompt(client: LoadClient, plan: LoadPlan) -> dict[str, object]:
    """TTFT of the long prompt idle, then while BACKGROUND_STREAMS streams are decoding."""
    idle = await client.stream(client.long_prompt_body, 4)
    result: dict[str, object] = {
        "prompt_tokens": idle.prompt_tokens,
        "idle_ttft_s": None if idle.error else idle.ttft_s,
        "idle_error": idle.error,
    }
    started = [asyncio.Event() for _ in range(BACKGROUND_STREAMS)]
    background = [
        asyncio.create_task(client.stream(DECODE_PROMPT, plan.background_tokens, event)) for event in started
    ]
    try:
        waiting = asyncio.gather(*(event.wait() for event in started))
        await asyncio.wait_for(waiting, plan.phase_timeout_s / 2)
        loaded = await client.stream(client.long_prompt_body, 4)
        still_decoding = sum(not task.done() for task in background)
        result |= {
            "loaded_ttft_s": None if loaded.error else loaded.ttft_s,
            "loaded_error": loaded.error,
            "background_still_decoding": still_decoding,
        }
        if result["idle_ttft_s"] and result["loaded_ttft_s"]:
            result["loaded_over_idle"] = float(loaded.ttft_s) / float(idle.ttft_s)
    except TimeoutError:
        # the background streams never all started: report it, not a TTFT measured on a half-idle server
        result["loaded_error"] = f"{BACKGROUND_STREAMS} background streams did not all start decoding"
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
    return result


async def run_plan(client: LoadClient, plan: LoadPlan) -> dict[str, object]:
    """Warm up, then every phase in order; a phase past its time limit is recorded as timed out."""
    results: dict[str, object] = {}
    warm = await client.stream(DECODE_PROMPT, 8)
    if warm.error:
        return {"error": f"warm-up request failed: {warm.error}"}

    async def phase(name: str, work: asyncio.Future[dict[str, object]] | object) -> None:
        try:
            results[name] = await asyncio.wait_for(work, plan.phase_timeout_s)  # type: ignore[arg-type]
        except TimeoutError:
            # a system too slow for the budget gets a visible 'timed out', and the suite goes on
            results[name] = {"error": f"timed out after {plan.phase_timeout_s:.0f} s"}

    await phase("single", single_stream(client, plan))
    for streams in plan.concurrency:
        await phase(f"concurrent@{streams}", concurrent_streams(client, plan, streams))
    await phase("long_prompt", long_prompt(client, plan))
    return results


def long_prompt_text(count_chat_tokens: Callable[[str], int], target: int = LONG_PROMPT_TOKENS) -> str:
    """A document of numbered sentences whose rendered chat prompt is about ``target`` tokens."""
    sentences = [
        f"Note {index}: the keeper logged the weather, the ships that passed and the state of the lamp."
        for index in range(1, target // 8)
    ]
    question = "\nSummarize the notes above in one sentence."
    low, high = 1, len(sentences)
    while low < high:  # the largest document that stays within the target
        middle = (low + high + 1) // 2
        if count_chat_tokens(" ".join(sentences[:middle]) + question) <= target:
            low = middle
        else:
            high = middle - 1
    return " ".join(sentences[:low]) + question
