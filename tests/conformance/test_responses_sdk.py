"""The seed's Responses examples, tools and structured output through the official ``openai`` SDK.

Runs against one real node with the default model (fixtures in conftest.py).
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest
from openai import OpenAI
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import BaseModel, TypeAdapter

from support.node_process import DEFAULT_MODEL
from support.tool_conversations import PERSON_SCHEMA, responses_tool_round_trip

pytestmark = pytest.mark.slow

MODEL = DEFAULT_MODEL
EVENTS = TypeAdapter(ResponseStreamEvent)
TOOLS: list[Any] = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Get weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
            "additionalProperties": False,
        },
    }
]


def test_seed_responses_usage(client: OpenAI) -> None:
    response = client.responses.create(
        model=MODEL,
        instructions="You are a helpful assistant.",
        input="What is distributed computing?",
        max_output_tokens=200,
    )
    assert response.object == "response" and response.status in ("completed", "incomplete")
    assert response.output_text.strip()
    assert response.output[-1].type == "message"
    assert response.usage is not None and 0 < response.usage.output_tokens <= 200
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


def test_token_limit_gives_incomplete(client: OpenAI) -> None:
    response = client.responses.create(
        model=MODEL, input="Write a long story about a dragon.", max_output_tokens=5
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None and response.usage.output_tokens == 5


def test_raw_stream_events_validate_and_concatenate(client: OpenAI) -> None:
    stream = client.responses.create(
        model=MODEL, input="Write a short poem about networks.", max_output_tokens=60, stream=True
    )
    events = list(stream)
    for event in events:
        EVENTS.validate_python(event.model_dump())
    assert [event.sequence_number for event in events] == list(range(len(events)))
    types = [event.type for event in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:-1] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert types[-1] in ("response.completed", "response.incomplete")
    deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    final = events[-1].response  # type: ignore[union-attr]
    assert deltas == final.output_text and deltas.strip()


def test_sdk_stream_helper(client: OpenAI) -> None:
    with client.responses.stream(
        model=MODEL, input="Say hello.", max_output_tokens=400, temperature=0
    ) as stream:
        text = "".join(event.delta for event in stream if event.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert isinstance(final, Response) and final.output_text == text


def test_seed_function_tool_example_and_round_trip(client: OpenAI) -> None:
    response = client.responses.create(
        model=MODEL, input="What is the weather in Chicago?", tools=TOOLS, max_output_tokens=100
    )
    assert response.status in ("completed", "incomplete")
    for item in response.output:
        if item.type == "function_call":
            assert item.name == "get_weather" and isinstance(json.loads(item.arguments), dict)
    follow_up = client.responses.create(
        model=MODEL,
        input=responses_tool_round_trip(),
        tools=TOOLS,
        tool_choice="none",
        max_output_tokens=60,
    )
    assert follow_up.output[-1].type == "message" and follow_up.output_text.strip()


@pytest.mark.parametrize("temperature", [0.0, 1.0, 1.0])
@pytest.mark.parametrize("choice", ["required", "named"])
def test_enforced_tool_choice_always_yields_a_valid_call(
    client: OpenAI, choice: str, temperature: float
) -> None:
    tool_choice: Any = "required" if choice == "required" else {"type": "function", "name": "get_weather"}
    response = client.responses.create(
        model=MODEL,
        input="Tell me a joke.",  # nothing about weather: the call is enforced, not prompted
        tools=TOOLS,
        tool_choice=tool_choice,
        temperature=temperature,
        max_output_tokens=120,
    )
    calls = [item for item in response.output if item.type == "function_call"]
    assert response.status == "completed" and len(calls) == 1
    assert calls[0].name == "get_weather"
    jsonschema.validate(json.loads(calls[0].arguments), TOOLS[0]["parameters"])


def test_enforced_call_streams_arguments(client: OpenAI) -> None:
    events = list(
        client.responses.create(
            model=MODEL,
            input="What is the weather in Paris?",
            tools=TOOLS,
            tool_choice="required",
            max_output_tokens=120,
            stream=True,
        )
    )
    for event in events:
        EVENTS.validate_python(event.model_dump())
    types = [event.type for event in events]
    assert types[2] == "response.output_item.added"
    deltas = [event.delta for event in events if event.type == "response.function_call_arguments.delta"]
    done = next(event for event in events if event.type == "response.function_call_arguments.done")
    assert "".join(deltas) == done.arguments  # type: ignore[union-attr]
    jsonschema.validate(json.loads(done.arguments), TOOLS[0]["parameters"])  # type: ignore[union-attr]
    assert types[-1] == "response.completed"


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_tool_choice_none_never_calls(client: OpenAI, temperature: float) -> None:
    response = client.responses.create(
        model=MODEL,
        input="What is the weather in Chicago? Call get_weather.",
        tools=TOOLS,
        tool_choice="none",
        temperature=temperature,
        max_output_tokens=60,
    )
    assert all(item.type != "function_call" for item in response.output)


@pytest.mark.parametrize("temperature", [0.0, 1.0, 1.0])
def test_json_schema_output_parses_and_validates(client: OpenAI, temperature: float) -> None:
    response = client.responses.create(
        model=MODEL,
        input="Describe a person.",
        text={"format": {"type": "json_schema", "name": "person", "schema": PERSON_SCHEMA, "strict": True}},
        temperature=temperature,
        max_output_tokens=200,
    )
    assert response.status == "completed"
    jsonschema.validate(json.loads(response.output_text), PERSON_SCHEMA)


class Person(BaseModel):
    name: str
    age: int


def test_sdk_parse_helper_with_pydantic_format(client: OpenAI) -> None:
    parsed = client.responses.parse(
        model=MODEL,
        input="Invent a person with a name and an age.",
        text_format=Person,
        max_output_tokens=200,
    )
    assert isinstance(parsed.output_parsed, Person)


def test_previous_response_id(client: OpenAI) -> None:
    first = client.responses.create(model=MODEL, input="My name is Ada.", max_output_tokens=30)
    second = client.responses.create(
        model=MODEL, input="Say hi.", previous_response_id=first.id, max_output_tokens=30
    )
    assert second.previous_response_id == first.id and second.usage is not None
    assert first.usage is not None and second.usage.input_tokens > first.usage.input_tokens
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model=MODEL, input="x", previous_response_id="resp_nope")
    assert raised.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_hosted_tool_is_rejected(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model=MODEL, input="x", tools=[{"type": "web_search"}])
    assert "web_search" in raised.value.message
