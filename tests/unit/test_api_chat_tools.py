"""Chat completions over HTTP with tools, response_format and reasoning, against a scripted engine.

The scripted engine answers with fixed text, so these tests check the wiring:
which constraint reaches the engine, what the model is shown, and how its text
becomes ``message.tool_calls`` / ``reasoning_content`` / streamed deltas.
That the constraint really forces a valid call is checked on a real node in
``tests/conformance/test_chat_tools_sdk.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from language_pipes.api.app import create_app
from language_pipes.engine.constraints import GrammarConstraint
from support.scripted_engine import ScriptedCatalog, ScriptedGenerator
from support.tool_conversations import chat_tool_round_trip

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL_TEXT = '{"name": "get_weather", "arguments": {"city": "Chicago"}}'
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Chicago?"}]


@pytest.fixture(scope="module")
def real_tokenizer(default_tokenizer: Any) -> Any:
    return default_tokenizer


def post(generator: ScriptedGenerator, **body: Any) -> Any:
    app = create_app(ScriptedCatalog(generator), api_keys=[], max_api_jobs=5)
    client = TestClient(app, raise_server_exceptions=False, base_url="http://localhost")
    return client.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK_WEATHER, **body})


def stream_chunks(generator: ScriptedGenerator, **body: Any) -> list[dict[str, Any]]:
    response = post(generator, stream=True, **body)
    assert response.status_code == 200, response.text
    payloads = [frame.removeprefix("data: ") for frame in response.text.split("\n\n") if frame]
    assert payloads[-1] == "[DONE]"
    return [json.loads(payload) for payload in payloads[:-1]]


def deltas_of(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [chunk["choices"][0]["delta"] for chunk in chunks if chunk["choices"]]


def assert_tool_call_delta_contract(chunks: list[dict[str, Any]]) -> dict[int, dict[str, str]]:
    """Every tool-call delta has ``index``; the first per index has id, type and name. Returns the calls."""
    calls: dict[int, dict[str, str]] = {}
    for delta in deltas_of(chunks):
        for call in delta.get("tool_calls") or []:
            assert isinstance(call["index"], int)
            if call["index"] not in calls:
                assert call["id"].startswith("call_") and call["type"] == "function"
                assert call["function"]["name"]
                calls[call["index"]] = {"name": call["function"]["name"], "arguments": ""}
            calls[call["index"]]["arguments"] += call["function"].get("arguments") or ""
    return calls


def test_auto_tool_call_becomes_message_tool_calls() -> None:
    generator = ScriptedGenerator(MODEL, ["Sure. ", CALL_TEXT[:20], CALL_TEXT[20:]])
    response = post(generator, tools=[WEATHER])
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Chicago"}
    assert generator.records[0].request.constraint is None
    system = generator.last_messages[0]
    assert system["role"] == "system" and "get_weather" in str(system["content"])


def test_auto_with_prose_is_plain_content_and_parallel_calls_are_kept() -> None:
    prose = ScriptedGenerator(MODEL, ["It is ", "sunny."])
    choice = post(prose, tools=[WEATHER]).json()["choices"][0]
    assert choice == {
        "index": 0,
        "message": {"role": "assistant", "content": "It is sunny.", "refusal": None},
        "finish_reason": "stop",
        "logprobs": None,
    }
    two_calls = "[" + CALL_TEXT + ", " + CALL_TEXT.replace("Chicago", "Oslo") + "]"
    parallel = post(ScriptedGenerator(MODEL, [two_calls]), tools=[WEATHER]).json()["choices"][0]
    assert [json.loads(c["function"]["arguments"])["city"] for c in parallel["message"]["tool_calls"]] == [
        "Chicago",
        "Oslo",
    ]
    single = post(ScriptedGenerator(MODEL, [two_calls]), tools=[WEATHER], parallel_tool_calls=False)
    assert len(single.json()["choices"][0]["message"]["tool_calls"]) == 1


def test_tool_choice_none_never_calls_and_hides_the_tools() -> None:
    generator = ScriptedGenerator(MODEL, [CALL_TEXT])
    choice = post(generator, tools=[WEATHER], tool_choice="none").json()["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["content"] == CALL_TEXT
    assert "tool_calls" not in choice["message"]
    assert all("get_weather" not in str(message["content"]) for message in generator.last_messages)


def test_streamed_auto_call_arrives_whole_at_the_end() -> None:
    generator = ScriptedGenerator(MODEL, [CALL_TEXT[:10], CALL_TEXT[10:30], CALL_TEXT[30:]])
    chunks = stream_chunks(generator, tools=[WEATHER])
    calls = assert_tool_call_delta_contract(chunks)
    assert list(calls) == [0] and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == {"city": "Chicago"}
    assert not any(delta.get("content") for delta in deltas_of(chunks))
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "tool_calls"}


def test_required_streams_the_enforced_call_as_it_is_generated(real_tokenizer: Any) -> None:
    generator = ScriptedGenerator(
        MODEL, [CALL_TEXT[start : start + 4] for start in range(0, len(CALL_TEXT), 4)]
    )
    generator.tokenizer = real_tokenizer
    chunks = stream_chunks(generator, tools=[WEATHER], tool_choice="required")
    assert isinstance(generator.records[0].request.constraint, GrammarConstraint)
    calls = assert_tool_call_delta_contract(chunks)
    assert calls == {0: {"name": "get_weather", "arguments": '{"city": "Chicago"}'}}
    argument_chunks = [d for d in deltas_of(chunks) if d.get("tool_calls") and "id" not in d["tool_calls"][0]]
    assert len(argument_chunks) > 1, "the arguments should stream in pieces, not in one delta at the end"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_named_tool_choice_non_streamed(real_tokenizer: Any) -> None:
    generator = ScriptedGenerator(MODEL, [CALL_TEXT])
    generator.tokenizer = real_tokenizer
    named = {"type": "function", "function": {"name": "get_weather"}}
    choice = post(generator, tools=[WEATHER], tool_choice=named, stop=[","]).json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"]["arguments"] == '{"city": "Chicago"}'
    request = generator.records[0].request
    assert isinstance(request.constraint, GrammarConstraint)
    assert request.stop == (), "a stop string must not cut an enforced call short"


def test_a_cut_off_enforced_call_reads_the_same_whole_and_streamed(real_tokenizer: Any) -> None:
    """The non-streamed answer is the stream collected: a call cut off by the token limit is the partial
    call in both, not the raw text in one and a call in the other."""
    cut_off = CALL_TEXT[:-8]
    pieces = [cut_off[start : start + 5] for start in range(0, len(cut_off), 5)]
    streamed_generator = ScriptedGenerator(MODEL, pieces, reason="length")
    streamed_generator.tokenizer = real_tokenizer
    chunks = stream_chunks(streamed_generator, tools=[WEATHER], tool_choice="required")
    streamed = assert_tool_call_delta_contract(chunks)
    whole_generator = ScriptedGenerator(MODEL, pieces, reason="length")
    whole_generator.tokenizer = real_tokenizer
    choice = post(whole_generator, tools=[WEATHER], tool_choice="required").json()["choices"][0]
    assert chunks[-1]["choices"][0]["finish_reason"] == choice["finish_reason"] == "length"
    assert choice["message"]["content"] is None
    function = choice["message"]["tool_calls"][0]["function"]
    assert streamed == {0: {"name": function["name"], "arguments": function["arguments"]}}
    assert function["name"] == "get_weather" and function["arguments"].startswith('{"city": "Ch')


def test_response_format_puts_a_json_constraint_on_the_engine(real_tokenizer: Any) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    generator = ScriptedGenerator(MODEL, ['{"n": 3}'])
    generator.tokenizer = real_tokenizer
    response_format = {"type": "json_schema", "json_schema": {"name": "count", "schema": schema}}
    choice = post(generator, response_format=response_format).json()["choices"][0]
    assert json.loads(choice["message"]["content"]) == {"n": 3}
    assert isinstance(generator.records[0].request.constraint, GrammarConstraint)
    assert json.dumps(schema, separators=(", ", ": ")) in str(generator.last_messages[0]["content"])
    json_object = ScriptedGenerator(MODEL, ["{}"])
    json_object.tokenizer = real_tokenizer
    assert post(json_object, response_format={"type": "json_object"}).status_code == 200
    assert isinstance(json_object.records[0].request.constraint, GrammarConstraint)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {"tools": [WEATHER], "response_format": {"type": "json_object"}},
            "response_format",
        ),
        (
            {"tools": [WEATHER, WEATHER]},
            "tools",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
            "tools[0].function.parameters",
        ),
        (
            {
                "tools": [
                    WEATHER,
                    {
                        "type": "function",
                        "function": {
                            "name": "broken",
                            "parameters": {"type": "object", "properties": {"a": {"type": "no-such-type"}}},
                        },
                    },
                ],
                "tool_choice": {"type": "function", "function": {"name": "broken"}},
            },
            "tools[1].function.parameters",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "no-such-type"}},
                }
            },
            "response_format.json_schema.schema",
        ),
    ],
)
def test_bad_tool_and_format_requests_are_400s(body: dict[str, Any], param: str, real_tokenizer: Any) -> None:
    generator = ScriptedGenerator(MODEL, ["x"])
    generator.tokenizer = real_tokenizer
    response = post(generator, **body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert generator.records == []


def test_reasoning_content_is_split_off_whole_and_streamed() -> None:
    pieces = ["<thi", "nk>The user", " greets.</th", "ink>\n\nHel", "lo!"]
    choice = post(ScriptedGenerator(MODEL, pieces)).json()["choices"][0]
    assert choice["message"]["content"] == "Hello!"
    assert choice["message"]["reasoning_content"] == "The user greets."
    deltas = deltas_of(stream_chunks(ScriptedGenerator(MODEL, pieces)))
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "The user greets."
    assert "".join(d.get("content") or "" for d in deltas) == "Hello!"
    assert all("<" not in d.get("reasoning_content", "") for d in deltas)
    first_answer = next(i for i, d in enumerate(deltas) if d.get("content"))
    assert all("reasoning_content" not in d for d in deltas[first_answer:])
    plain = post(ScriptedGenerator(MODEL, ["Hi"])).json()["choices"][0]["message"]
    assert "reasoning_content" not in plain


class CharacterTokenizer:
    """Decodes the scripted engine's one-token-per-character prompts."""

    def decode(self, token_ids: list[int]) -> str:
        return "".join(chr(token_id) for token_id in token_ids)


class ThinkingTemplateGenerator(ScriptedGenerator):
    """A model whose chat template opens the ``<think>`` block in the generation prompt (Qwen3 style)."""

    def encode_chat(self, messages: list[dict[str, object]]) -> list[int]:
        return super().encode_chat(messages) + [ord(character) for character in "<assistant><think>\n"]


def test_reasoning_opened_by_the_template_is_split_too() -> None:
    generator = ThinkingTemplateGenerator(MODEL, ["Short", " thought.", "</think>", "Answer."])
    generator.tokenizer = CharacterTokenizer()
    message = post(generator).json()["choices"][0]["message"]
    assert message["reasoning_content"] == "Short thought." and message["content"] == "Answer."


def test_tool_round_trip_renders_through_the_real_chat_template(real_tokenizer: Any) -> None:
    messages = chat_tool_round_trip()
    generator = ScriptedGenerator(MODEL, ["It is 72 degrees."])
    response = post(generator, messages=messages, tools=[WEATHER])
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "It is 72 degrees."
    roles = [message["role"] for message in generator.last_messages]
    assert roles == ["system", "user", "assistant", "user"]
    assert json.loads(str(generator.last_messages[2]["content"])) == {
        "name": "get_weather",
        "arguments": {"city": "Chicago"},
    }
    rendered = real_tokenizer.apply_chat_template(
        generator.last_messages, tokenize=False, add_generation_prompt=True
    )
    assert '{"temperature": 72}' in rendered and "get_weather" in rendered and "call_abc" in rendered
    assert rendered.endswith("<|im_start|>assistant\n")


def test_an_answer_sent_back_with_its_reasoning_is_accepted_and_the_reasoning_not_shown() -> None:
    first = post(ScriptedGenerator(MODEL, ["<think>secret plan</think>", CALL_TEXT]), tools=[WEATHER])
    message = first.json()["choices"][0]["message"]
    assert message["reasoning_content"] == "secret plan" and message["tool_calls"]
    call_id = message["tool_calls"][0]["id"]
    history = [*ASK_WEATHER, message, {"role": "tool", "tool_call_id": call_id, "content": "72F"}]
    generator = ScriptedGenerator(MODEL, ["Warm."])
    response = post(generator, messages=history, tools=[WEATHER])
    assert response.status_code == 200, response.text
    assert all("secret plan" not in str(turn["content"]) for turn in generator.last_messages)
    assert f"Result of tool 'get_weather' (call {call_id})" in str(generator.last_messages[-1]["content"])
