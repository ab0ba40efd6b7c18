"""Speculation with the real default model: a lone greedy request equals transformers, tool calls stay valid.

Default mode (not batch-invariant), bf16, one torch thread: a request that
quotes, corrects or reformats its prompt drafts and accepts tokens, and its
tokens are exactly what transformers' ``generate`` picks in one process
(``numerics``: rerun on a second CPU kernel family); a constrained tool call
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
# Grounded prompts whose greedy output left transformers' within 30 tokens while verified rows
# attended like a prefill chunk (before decode runs went row by row).
REWRITES = [
    "Correct the spelling in this text and return it: Teh quick brown fox jumpd over the lazy dog "
    "while the farmer was wachting from the porch.",
    "Translate the following list into a JSON array of strings: apples, pears, oranges, plums, "
    "cherries, grapes, lemons.",
]
NEW_TOKENS = 20
REWRITE_TOKENS = 30


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


@pytest.fixture(scope="module")
def reference(folder: Path) -> AutoModelForCausalLM:
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()


def greedy_pair(
    generator: ModelGenerator, reference: AutoModelForCausalLM, prompt: list[int], count: int
) -> tuple[list[int], list[int], str, Finished]:
    """(speculating tokens, transformers' tokens, text, Finished) for one lone greedy request."""
    request = GenerationRequest(prompt, SamplingParams(temperature=0.0), max_new_tokens=count)
    tokens, text, finished = generate(generator, request)
    with torch.inference_mode():
        output = reference.generate(
            torch.tensor([prompt]), do_sample=False, max_new_tokens=count, pad_token_id=0
        )
    expected = [t for t in output[0, len(prompt) :].tolist() if t not in generator.end_model.eos_token_ids]
    return tokens, expected, text, finished


@pytest.mark.numerics
def test_a_lone_greedy_request_that_speculates_equals_transformers(
    engine: tuple[Scheduler, ModelGenerator], reference: AutoModelForCausalLM
) -> None:
    _, generator = engine
    prompt = generator.encode_chat(QUOTE)
    tokens, expected, text, finished = greedy_pair(generator, reference, prompt, NEW_TOKENS)
    assert tokens == expected, text
    assert "lighthouse keeper" in text
    assert finished.accepted_tokens >= 8, finished  # most of the quote came from accepted drafts


@pytest.mark.numerics
@pytest.mark.parametrize("text", REWRITES, ids=["spelling", "json-list"])
def test_speculating_rewrites_equal_transformers_token_for_token(
    engine: tuple[Scheduler, ModelGenerator], reference: AutoModelForCausalLM, text: str
) -> None:
    _, generator = engine
    prompt = generator.encode_chat([{"role": "user", "content": text}])
    tokens, expected, output, finished = greedy_pair(generator, reference, prompt, REWRITE_TOKENS)
    assert tokens == expected, output
    assert finished.drafted_tokens > 0, finished


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
