"""Constrained decoding with the real tokenizer and the real default model (greedy and sampled)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch

from language_pipes.engine.constraints import (
    GrammarCompileError,
    GrammarConstraint,
    check_json_schema,
    json_object_constraint,
    json_schema_constraint,
    tool_call_constraint,
    tool_call_schema,
)

EOS = 2  # <|im_end|> in the default model

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
ADD = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"],
    "additionalProperties": False,
}
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 3},
        "kind": {"enum": ["human", "robot"]},
    },
    "required": ["name", "age", "kind"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tokenizer(default_tokenizer: Any) -> Any:
    return default_tokenizer


@pytest.fixture(scope="module")
def model(default_model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    return AutoModelForCausalLM.from_pretrained(str(default_model_dir), dtype=torch.bfloat16).eval()


def feed_text(tokenizer: Any, constraint: GrammarConstraint, text: str) -> bool:
    """Push the tokens of ``text`` through the constraint; False as soon as one is not allowed."""
    for token_id in tokenizer.encode(text, add_special_tokens=False):
        if not constraint.allowed_tokens(len(tokenizer))[token_id]:
            return False
        constraint.accept(token_id)
    return True


def generate(
    model: Any,
    tokenizer: Any,
    prompt: str,
    constraint: GrammarConstraint,
    *,
    seed: int | None,
    limit: int = 120,
) -> str:
    """A minimal decode loop applying the mask the way the engine does (mask, sample, accept)."""
    messages = [{"role": "user", "content": prompt}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    input_ids = torch.tensor([ids])
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    cache = None
    produced: list[int] = []
    with torch.no_grad():
        for _ in range(limit):
            output = model(input_ids=input_ids, cache=cache, use_cache=True)
            cache = output.cache
            logits = output.logits[0, -1].float()
            allowed = constraint.allowed_tokens(logits.shape[0])
            assert allowed is not None and bool(allowed.any())
            logits[~allowed] = float("-inf")
            if generator is None:
                token = int(logits.argmax())
            else:
                token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
            constraint.accept(token)
            if token == EOS:
                break
            produced.append(token)
            if constraint.is_finished():
                break
            input_ids = torch.tensor([[token]])
    return tokenizer.decode(produced)


def test_schema_accepts_valid_and_refuses_invalid_text(tokenizer: Any) -> None:
    good = json_schema_constraint(tokenizer, ADD)
    assert feed_text(tokenizer, good, '{"a": 1, "b": 22}')
    assert good.is_finished() and good.is_complete()
    assert good.allowed_tokens(len(tokenizer)).nonzero().flatten().tolist() == [EOS]

    wrong_type = json_schema_constraint(tokenizer, ADD)
    assert not feed_text(tokenizer, wrong_type, '{"a": "one"')
    extra_key = json_schema_constraint(tokenizer, ADD)
    assert not feed_text(tokenizer, extra_key, '{"a": 1, "c"')
    loose_space = json_schema_constraint(tokenizer, ADD)
    assert not feed_text(tokenizer, loose_space, '{ "a"')  # compact form only


def test_unfinished_output_does_not_allow_stop(tokenizer: Any) -> None:
    constraint = json_object_constraint(tokenizer)
    assert feed_text(tokenizer, constraint, '{"x": [1, 2')
    assert not constraint.is_finished()
    assert not constraint.allowed_tokens(len(tokenizer))[EOS]


def test_stop_token_ends_a_complete_match(tokenizer: Any) -> None:
    constraint = json_schema_constraint(tokenizer, {"type": "integer"})
    assert feed_text(tokenizer, constraint, "12")
    mask = constraint.allowed_tokens(len(tokenizer))
    assert mask[EOS]  # complete ...
    assert mask[tokenizer.encode("3", add_special_tokens=False)[0]]  # ... but may go on
    constraint.accept(EOS)
    assert constraint.is_finished()


def test_mask_padded_to_model_vocab(tokenizer: Any) -> None:
    constraint = json_object_constraint(tokenizer)
    mask = constraint.allowed_tokens(len(tokenizer) + 64)
    assert mask.shape == (len(tokenizer) + 64,) and not mask[len(tokenizer) :].any()


def test_unenforceable_schema_is_reported(tokenizer: Any) -> None:
    with pytest.raises(GrammarCompileError, match="not"):
        check_json_schema(tokenizer, {"type": "object", "not": {"required": ["x"]}})
    with pytest.raises(GrammarCompileError):
        json_schema_constraint(tokenizer, {"type": "objekt"})


def test_tool_call_grammar_allows_only_listed_tools(tokenizer: Any) -> None:
    tools = {"get_weather": WEATHER, "add": ADD}
    good = tool_call_constraint(tokenizer, tools)
    assert feed_text(tokenizer, good, '{"name": "add", "arguments": {"a": 2, "b": 3}}')
    assert good.is_finished()
    unknown = tool_call_constraint(tokenizer, tools)
    assert not feed_text(tokenizer, unknown, '{"name": "delete_everything"')
    mismatched = tool_call_constraint(tokenizer, tools)
    assert not feed_text(tokenizer, mismatched, '{"name": "add", "arguments": {"city"')
    schema = tool_call_schema({"only": None})
    assert schema["properties"]["arguments"] == {"type": "object"}


@pytest.mark.parametrize("seed", [None, 1, 2, 3])
def test_model_tool_call_is_always_valid(model: Any, tokenizer: Any, seed: int | None) -> None:
    tools = {"get_weather": WEATHER, "add": ADD}
    constraint = tool_call_constraint(tokenizer, tools)
    text = generate(model, tokenizer, "What is the weather in Chicago?", constraint, seed=seed)
    call = json.loads(text)
    assert call["name"] in tools
    jsonschema.validate(call["arguments"], tools[call["name"]])
    assert constraint.is_complete()


@pytest.mark.parametrize("seed", [None, 4, 5])
def test_model_json_schema_output_validates(model: Any, tokenizer: Any, seed: int | None) -> None:
    constraint = json_schema_constraint(tokenizer, PERSON)
    text = generate(model, tokenizer, "Describe a person as JSON.", constraint, seed=seed, limit=200)
    jsonschema.validate(json.loads(text), PERSON)


def test_model_json_object_output_parses(model: Any, tokenizer: Any) -> None:
    prompt = 'Give me a JSON object with the keys "name" and "age" of a person.'
    constraint = json_object_constraint(tokenizer)
    text = generate(model, tokenizer, prompt, constraint, seed=None, limit=200)
    assert isinstance(json.loads(text), dict)
    assert constraint.is_finished()
