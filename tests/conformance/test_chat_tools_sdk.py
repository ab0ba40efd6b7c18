"""Chat-completions tools, structured output and the SDK's helpers, through the official ``openai`` SDK.

Runs against one real node with the default model (fixtures in conftest.py).
The enforced cases (``required``, a named tool, ``json_schema``) are asserted
to hold every time, at temperature 0 and 1: constrained decoding guarantees
them, so no retry or tolerance is needed.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel, Field

from support.node_process import DEFAULT_MODEL
from support.tool_conversations import PERSON_SCHEMA, chat_tool_round_trip

pytestmark = pytest.mark.slow

MODEL = DEFAULT_MODEL
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get weather for a city",
            "parameters": WEATHER_PARAMETERS,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Get the local time in a time zone",
            "parameters": {
                "type": "object",
                "properties": {"zone": {"type": "string", "maxLength": 40}},
                "required": ["zone"],
                "additionalProperties": False,
            },
        },
    },
]
PARAMETERS_BY_NAME = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}
ASK_WEATHER: list[Any] = [{"role": "user", "content": "What is the weather in Chicago?"}]


def assert_valid_calls(completion: ChatCompletion, allowed: set[str]) -> None:
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.tool_calls, choice.message
    for call in choice.message.tool_calls:
        assert call.type == "function" and call.id
        assert call.function.name in allowed
        jsonschema.validate(json.loads(call.function.arguments), PARAMETERS_BY_NAME[call.function.name])


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("choice", ["required", "named"])
def test_enforced_tool_choice_always_yields_valid_tool_calls(
    client: OpenAI, choice: str, temperature: float
) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me a joke."}],  # unrelated: the call is enforced
        tools=TOOLS,
        tool_choice="required" if choice == "required" else named,  # type: ignore[arg-type]
        temperature=temperature,
        max_completion_tokens=120,
    )
    assert_valid_calls(completion, {"get_weather", "get_time"} if choice == "required" else {"get_time"})
    assert completion.choices[0].message.content is None


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_tool_choice_none_never_calls(client: OpenAI, temperature: float) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the weather in Chicago? Call get_weather."}],
        tools=TOOLS,
        tool_choice="none",
        temperature=temperature,
        max_completion_tokens=60,
    )
    choice = completion.choices[0]
    assert not choice.message.tool_calls and choice.finish_reason in ("stop", "length")
    assert isinstance(choice.message.content, str)


def test_auto_gives_a_valid_call_or_plain_text(client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=ASK_WEATHER, tools=TOOLS, temperature=0, max_completion_tokens=100
    )
    choice = completion.choices[0]
    if choice.message.tool_calls:
        assert_valid_calls(completion, {"get_weather", "get_time"})
    else:
        assert isinstance(choice.message.content, str) and choice.finish_reason in ("stop", "length")


def test_streamed_tool_call_deltas_follow_the_contract(client: OpenAI) -> None:
    chunks: list[ChatCompletionChunk] = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "What is the weather in Paris?"}],
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_completion_tokens=120,
            stream=True,
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    call_deltas = [call for chunk in chunks for call in (chunk.choices[0].delta.tool_calls or [])]
    assert call_deltas and all(call.index == 0 for call in call_deltas)
    first, rest = call_deltas[0], call_deltas[1:]
    assert first.id and first.type == "function" and first.function and first.function.name == "get_weather"
    assert all(call.id is None and (call.function is None or call.function.name is None) for call in rest)
    assert len(rest) > 1, "the enforced arguments should stream as they are generated"
    arguments = "".join(call.function.arguments or "" for call in call_deltas if call.function)
    jsonschema.validate(json.loads(arguments), WEATHER_PARAMETERS)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not any(chunk.choices[0].delta.content for chunk in chunks)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_json_schema_output_parses_and_validates(client: OpenAI, temperature: float) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a person."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": PERSON_SCHEMA, "strict": True},
        },
        temperature=temperature,
        max_completion_tokens=200,
    )
    assert completion.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(completion.choices[0].message.content or ""), PERSON_SCHEMA)


def test_json_object_output_parses(client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give me a JSON object describing a cat."}],
        response_format={"type": "json_object"},
        temperature=0,
        max_completion_tokens=200,
    )
    if completion.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)
    else:  # cut off by the token limit: still the beginning of a JSON object
        assert (completion.choices[0].message.content or "").startswith("{")


def test_sdk_stream_helper_for_text_and_tools(client: OpenAI) -> None:
    with client.chat.completions.stream(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello."}],
        max_completion_tokens=200,
        temperature=0,
    ) as stream:
        text = "".join(event.delta for event in stream if event.type == "content.delta")
        final = stream.get_final_completion()
    assert final.choices[0].message.content == text and text

    with client.chat.completions.stream(
        model=MODEL,
        messages=ASK_WEATHER,
        tools=TOOLS,
        tool_choice="required",
        max_completion_tokens=300,
        temperature=0,  # sampled arguments can run to the limit, which the SDK helper rejects
    ) as stream:
        done = [event for event in stream if event.type == "tool_calls.function.arguments.done"]
        final = stream.get_final_completion()
    assert len(done) == 1 and done[0].name in PARAMETERS_BY_NAME
    jsonschema.validate(json.loads(done[0].arguments), PARAMETERS_BY_NAME[done[0].name])
    [call] = final.choices[0].message.tool_calls or []
    assert call.function.arguments == done[0].arguments
    assert final.choices[0].finish_reason == "tool_calls"


class Person(BaseModel):
    name: str = Field(max_length=40)
    age: int = Field(ge=0, le=150)


class GetWeather(BaseModel):
    """Get weather for a city."""

    city: str = Field(max_length=40)


def test_sdk_parse_helper_with_pydantic_models(client: OpenAI) -> None:
    parsed = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Invent a person with a name and an age."}],
        response_format=Person,
        max_completion_tokens=200,
    )
    assert isinstance(parsed.choices[0].message.parsed, Person)

    with_tool = client.chat.completions.parse(
        model=MODEL,
        messages=ASK_WEATHER,
        tools=[openai.pydantic_function_tool(GetWeather)],
        tool_choice="required",
        max_completion_tokens=120,
    )
    [call] = with_tool.choices[0].message.tool_calls or []
    assert call.function.name == "GetWeather"
    assert isinstance(call.function.parsed_arguments, GetWeather)


def test_tool_result_round_trip(client: OpenAI) -> None:
    """The usual client loop: call, append the SDK's message object and the tool result, ask again."""
    first = client.chat.completions.create(
        model=MODEL, messages=ASK_WEATHER, tools=TOOLS, tool_choice="required", max_completion_tokens=120
    )
    answer = first.choices[0].message
    [call] = answer.tool_calls or []
    messages: list[Any] = [
        *ASK_WEATHER,
        answer,
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 72}'},
    ]
    follow_up = client.chat.completions.create(
        model=MODEL, messages=messages, tools=TOOLS, tool_choice="none", max_completion_tokens=60
    )
    assert (follow_up.choices[0].message.content or "").strip()
    question_only = client.chat.completions.create(
        model=MODEL, messages=ASK_WEATHER, tools=TOOLS, tool_choice="none", max_completion_tokens=1
    )
    assert follow_up.usage is not None and question_only.usage is not None
    assert follow_up.usage.prompt_tokens > question_only.usage.prompt_tokens + 10  # the call and its result

    written_by_hand = chat_tool_round_trip()
    again = client.chat.completions.create(model=MODEL, messages=written_by_hand, max_completion_tokens=40)
    assert isinstance(again.choices[0].message.content, str)


def test_bad_tools_are_400s_naming_the_parameter(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as hosted:
        client.chat.completions.create(
            model=MODEL,
            messages=ASK_WEATHER,
            tools=[{"type": "web_search"}],  # type: ignore[list-item]
        )
    assert "web_search" in hosted.value.message
    with pytest.raises(openai.BadRequestError) as unknown:
        client.chat.completions.create(
            model=MODEL,
            messages=ASK_WEATHER,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "get_stock_price"}},
        )
    assert unknown.value.body["param"] == "tool_choice"  # type: ignore[index]
