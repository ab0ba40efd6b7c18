"""The scheduler reserves each sequence's maximum length on its hops and never feeds past the context.

A tiny llama end model and a budgeted local layer segment, in this process.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from language_pipes.engine.generator import ModelGenerator
from language_pipes.engine.scheduler import Scheduler
from language_pipes.engine.types import Finished, GenerationRequest, SamplingParams, TextDelta
from language_pipes.models.end_model import EndModel
from language_pipes.models.segment import LayerSegment
from language_pipes.pipes.route import LocalHop, Route
from support.tiny_models import build_tiny_model

PROMPT = [1, 5, 7, 9, 11]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[EndModel, LayerSegment]:
    folder = build_tiny_model("llama", Path(tmp_path_factory.mktemp("tiny")) / "llama")
    end = EndModel("tiny", folder, num_local_layers=1, dtype=torch.float32)
    segment = LayerSegment(end.source, 1, end.num_layers, torch.float32, torch.device("cpu"))
    segment.kv_budget_bytes = 64 * segment.kv_bytes_per_token
    return end, segment


def generate(end: EndModel, segment: LayerSegment, request: GenerationRequest) -> tuple[Finished, list[int]]:
    route = Route([LocalHop(segment, segment.start, segment.end)])
    reserved: list[int] = []
    scheduler = Scheduler(end, lambda: route)
    scheduler.start()

    async def run() -> Finished:
        async for event in ModelGenerator(end, scheduler).generate(request):
            if isinstance(event, TextDelta):
                reserved.append(segment.reserved_tokens())
            elif isinstance(event, Finished):
                return event
        raise AssertionError("no Finished event")

    try:
        return asyncio.run(asyncio.wait_for(run(), 60)), reserved
    finally:
        scheduler.stop()


def test_each_hop_reserves_the_prompt_plus_the_completion_budget(tiny: tuple[EndModel, LayerSegment]) -> None:
    end, segment = tiny
    request = GenerationRequest(PROMPT, SamplingParams(temperature=1.0, seed=2), max_new_tokens=6)
    finished, reserved = generate(end, segment, request)
    assert finished.reason in ("stop", "length")
    # Read as the client gets each delta: the last ones may arrive after the sequence ended and freed it.
    assert reserved and reserved[0] == len(PROMPT) + 6 and set(reserved) <= {len(PROMPT) + 6, 0}
    assert segment.reserved_tokens() == 0


def test_a_request_larger_than_the_budget_is_refused_with_503(tiny: tuple[EndModel, LayerSegment]) -> None:
    end, segment = tiny
    request = GenerationRequest(PROMPT, SamplingParams(temperature=0.0), max_new_tokens=100)
    finished, _ = generate(end, segment, request)
    assert (finished.reason, finished.failure) == ("error", "unavailable")  # the API answers 503
    assert "KV cache" in (finished.error or "")


def test_generation_stops_at_the_context_whatever_the_completion_budget(
    tiny: tuple[EndModel, LayerSegment], monkeypatch: pytest.MonkeyPatch
) -> None:
    end, segment = tiny
    monkeypatch.setattr(end, "context_length", 12)
    request = GenerationRequest(PROMPT, SamplingParams(temperature=1.0, seed=1), max_new_tokens=10_000)
    monkeypatch.setattr(end, "eos_token_ids", frozenset())  # sample on past EOS: only the context ends it
    finished, _ = generate(end, segment, request)
    assert (finished.reason, finished.prompt_tokens + finished.completion_tokens) == ("length", 12)
