"""Speculation with the real default model: a lone greedy request equals transformers, tool calls stay valid.

Default mode (not batch-invariant), bf16, one torch thread: a request that
quotes its prompt drafts and accepts tokens, and its tokens are exactly what
transformers' ``generate`` picks in one process; a constrained tool call
drafts the tokens its grammar forces and is still a valid call.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
import torch
from transformers import AutoModelForCausalLM

from language_pipes.engine.constraints import tool_call_constraint
from language_pipes.engine.generator import ModelGenerator
from language_pipes.engine.scheduler import Scheduler
from language_pipes.engine.speculation import SpeculationSettings
from language_pipes.engine.types import Finished, GenerationRequest, SamplingParams, TextDelta
from language_pipes.pipes.route import Route
from support.tiny_models import default_model_folder, open_split

QUOTE = [
    {
        "role": "user",
        "content": "Repeat this sentence exactly: The old lighthouse keeper climbed the stairs every night "
        "to light the lamp for the ships at sea.",
    }
]
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}},
    "required": ["city"],
    "additionalProperties": False,
}
NEW_TOKENS = 20


@pytest.fixture(scope="module")
def folder(model_store_dir: Path) -> Path:
    torch.set_num_threads(1)
    return default_model_folder(model_store_dir)


@pytest.fixture(scope="module")
def engine(folder: Path) -> Iterator[tuple[Scheduler, ModelGenerator]]:
    split = open_split(folder, (1, 30), torch.bfloat16)
    route = Route(split.segments)
    settings = SpeculationSettings(enabled=True, max_tokens=6)
    scheduler = Scheduler(split.end, lambda: route, prefill_chunk=512, speculation=settings)
    scheduler.start()
    yield scheduler, ModelGenerator(split.end, scheduler)
    scheduler.stop()


def generate(generator: ModelGenerator, request: GenerationRequest) -> tuple[list[int], str, Finished]:
    async def collect() -> tuple[list[int], str, Finished]:
        tokens: list[int] = []
        text = ""
        async for event in generator.generate(request):
            if isinstance(event, TextDelta):
                tokens += event.token_ids
                text += event.text
            else:
                return tokens, text, event
        raise AssertionError("no Finished event")

    return asyncio.run(asyncio.wait_for(collect(), 120))


def test_a_lone_greedy_request_that_speculates_equals_transformers(
    folder: Path, engine: tuple[Scheduler, ModelGenerator]
) -> None:
    _, generator = engine
    prompt = generator.encode_chat(QUOTE)
    request = GenerationRequest(prompt, SamplingParams(temperature=0.0), max_new_tokens=NEW_TOKENS)
    tokens, text, finished = generate(generator, request)
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    with torch.inference_mode():
        output = reference.generate(
            torch.tensor([prompt]), do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=0
        )
    expected = [t for t in output[0, len(prompt) :].tolist() if t not in generator.end_model.eos_token_ids]
    assert tokens == expected, text
    assert "lighthouse keeper" in text
    assert finished.accepted_tokens >= 8, finished  # most of the quote came from accepted drafts


def test_a_speculating_tool_call_is_still_valid(engine: tuple[Scheduler, ModelGenerator]) -> None:
    _, generator = engine
    tools = {"get_weather": WEATHER}
    prompt = generator.encode_chat([{"role": "user", "content": "What is the weather in Chicago?"}])
    sampling = SamplingParams(temperature=0.8, seed=3)
    constraint = tool_call_constraint(generator.tokenizer, tools)
    request = GenerationRequest(prompt, sampling, max_new_tokens=40, constraint=constraint)
    _, text, finished = generate(generator, request)
    call = json.loads(text)
    assert call["name"] == "get_weather"
    jsonschema.validate(call["arguments"], WEATHER)
    assert finished.accepted_tokens > 0, finished  # the grammar's forced tokens were drafted and kept
