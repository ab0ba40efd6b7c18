"""/v1/responses over HTTP against a scripted engine: shapes, event sequences, tools, reasoning, store."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from language_pipes.engine.constraints import GrammarConstraint
from support.responses_http import WEATHER_TOOL, make_client, post
from support.tool_conversations import responses_tool_round_trip

EVENTS = TypeAdapter(ResponseStreamEvent)


def stream_events(client: TestClient, **body: Any) -> list[Any]:
    response = post(client, stream=True, **body)
    assert response.status_code == 200, response.text
    frames = [frame for frame in response.text.split("\n\n") if frame]
    assert frames[-1] == "data: [DONE]"
    events = []
    for frame in frames[:-1]:
        event_line, data_line = frame.split("\n")
        event = EVENTS.validate_python(json.loads(data_line.removeprefix("data: ")))
        assert event_line == f"event: {event.type}"
        events.append(event)
    assert [event.sequence_number for event in events] == list(range(len(events)))
    return events


@pytest.fixture(scope="module")
def tokenizer(default_tokenizer: Any) -> Any:
    return default_tokenizer


def test_plain_response_shape() -> None:
    client, generator = make_client(["Hel", "lo", "!"])
    response = post(client, instructions="Be brief.", max_output_tokens=50, metadata={"k": "v"})
    assert response.status_code == 200, response.text
    body = response.json()
    parsed = Response.model_validate(body)
    assert parsed.object == "response" and parsed.status == "completed" and parsed.id.startswith("resp_")
    assert parsed.output_text == body["output_text"] == "Hello!"
    assert [item.type for item in parsed.output] == ["message"]
    assert parsed.usage is not None and parsed.usage.output_tokens == 3
    assert parsed.usage.total_tokens == parsed.usage.input_tokens + 3
    assert parsed.metadata == {"k": "v"} and parsed.instructions == "Be brief."
    assert generator.last_messages[0] == {"role": "system", "content": "Be brief."}
    assert generator.records[0].request.max_new_tokens == 50


def test_length_limit_is_incomplete() -> None:
    client, _ = make_client(["a", "b", "c"])
    body = post(client, max_output_tokens=2).json()
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output_text"] == "ab"
    events = stream_events(client, max_tokens=2)
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"


def test_stream_event_sequence() -> None:
    client, _ = make_client(["Hel", "lo", "!"])
    events = stream_events(client)
    assert [event.type for event in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert deltas == events[7].text == events[-1].response.output[0].content[0].text == "Hello!"


def test_reasoning_split() -> None:
    pieces = ["<th", "ink>\nLet", " me think.", "\n</thi", "nk>\n\n", "Four", "."]
    client, _ = make_client(pieces)
    body = post(client).json()
    assert [item["type"] for item in body["output"]] == ["reasoning", "message"]
    assert body["output"][0]["summary"] == [{"type": "summary_text", "text": "Let me think."}]
    assert body["output_text"] == "Four."
    events = stream_events(client)
    types = [event.type for event in events]
    reasoning = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    assert reasoning == "Let me think."
    first_reasoning_done = types.index("response.output_item.done")
    assert events[first_reasoning_done].item.type == "reasoning"
    message_added = [e for e in events if e.type == "response.output_item.added" and e.item.type == "message"]
    assert (
        message_added[0].output_index == 1
        and types.index("response.output_item.added", 3) > first_reasoning_done
    )
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Four."


def test_unknown_parameter_and_bad_values_are_400() -> None:
    client, _ = make_client(["x"])
    for extra, param in [
        ({"reasoning": {"effort": "low"}}, "reasoning"),
        ({"temperature": 5}, "temperature"),
        ({"input": [{"type": "input_image", "image_url": "x"}]}, "input[0]"),
        ({"previous_response_id": "resp_missing"}, "previous_response_id"),
        ({"max_output_tokens": 5, "max_tokens": 6}, "max_tokens"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tool_choice": "required"}, "tool_choice"),
    ]:
        response = post(client, **extra)
        assert response.status_code == 400, (extra, response.text)
        error = response.json()["error"]
        assert error["param"] == param, (extra, error)
        assert error["message"]
    assert "web_search" in post(client, tools=[{"type": "web_search"}]).json()["error"]["message"]
    assert "resp_missing" in post(client, previous_response_id="resp_missing").json()["error"]["message"]


def test_auto_tool_call_and_malformed_call() -> None:
    call_text = '{"name": "get_weather", "arguments": {"city": "Chicago"}}'
    client, generator = make_client([call_text[:10], call_text[10:]])
    body = post(client, input="What is the weather in Chicago?", tools=[WEATHER_TOOL]).json()
    assert [item["type"] for item in body["output"]] == ["function_call"]
    call = body["output"][0]
    assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Chicago"}
    assert call["call_id"].startswith("call_") and call["status"] == "completed"
    assert "get_weather" in str(generator.last_messages[0]["content"])
    events = stream_events(client, tools=[WEATHER_TOOL])
    assert [e.type for e in events[2:]] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]

    broken, _ = make_client(['{"name": "get_weather", "arguments": {"city": '])
    body = post(broken, tools=[WEATHER_TOOL]).json()
    assert [item["type"] for item in body["output"]] == ["message"]
    assert body["output_text"].startswith('{"name"')


def test_tool_choice_none_never_calls() -> None:
    call_text = '{"name": "get_weather", "arguments": {"city": "Chicago"}}'
    client, generator = make_client([call_text])
    body = post(client, tools=[WEATHER_TOOL], tool_choice="none").json()
    assert [item["type"] for item in body["output"]] == ["message"]
    assert all("get_weather" not in str(message["content"]) for message in generator.last_messages)
    assert generator.records[0].request.constraint is None


def test_function_call_round_trip_renders_the_result() -> None:
    client, generator = make_client(["It is 72 degrees."])
    body = post(
        client,
        tools=[WEATHER_TOOL],
        input=responses_tool_round_trip(),
    ).json()
    assert body["output_text"] == "It is 72 degrees."
    roles = [message["role"] for message in generator.last_messages]
    assert roles == ["system", "user", "assistant", "user"]
    assert '"get_weather"' in str(generator.last_messages[2]["content"])
    assert "get_weather" in str(generator.last_messages[3]["content"])
    assert '{"temperature": 72}' in str(generator.last_messages[3]["content"])


def test_previous_response_id_continues_the_conversation() -> None:
    client, generator = make_client(["Nice to meet you, Ada."])
    first = post(client, input="My name is Ada.", instructions="Be kind.").json()
    second = post(client, input="What is my name?", previous_response_id=first["id"]).json()
    assert second["previous_response_id"] == first["id"]
    assert generator.last_messages == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Nice to meet you, Ada."},
        {"role": "user", "content": "What is my name?"},
    ]
    unstored = post(client, input="x", store=False).json()
    assert post(client, previous_response_id=unstored["id"]).status_code == 400


def test_enforced_call_streams_arguments_live(tokenizer: Any) -> None:
    call_text = '{"name": "get_weather", "arguments": {"city": "Chicago"}}'
    pieces = [call_text[index : index + 4] for index in range(0, len(call_text), 4)]
    client, generator = make_client(pieces, tokenizer)
    events = stream_events(client, tools=[WEATHER_TOOL], tool_choice="required")
    assert isinstance(generator.records[0].request.constraint, GrammarConstraint)
    types = [event.type for event in events]
    assert types[2] == "response.output_item.added" and events[2].item.type == "function_call"
    deltas = [event.delta for event in events if event.type == "response.function_call_arguments.delta"]
    assert len(deltas) > 3 and "".join(deltas) == '{"city": "Chicago"}'
    assert events[-1].response.output[0].arguments == '{"city": "Chicago"}'
    named = post(client, tools=[WEATHER_TOOL], tool_choice={"type": "function", "name": "get_weather"}).json()
    assert named["output"][0]["name"] == "get_weather"


def test_structured_output_attaches_a_constraint(tokenizer: Any) -> None:
    client, generator = make_client(['{"a": 1}'], tokenizer)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    fmt = {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}
    body = post(client, text={"format": fmt}).json()
    assert body["output_text"] == '{"a": 1}' and body["text"]["format"]["type"] == "json_schema"
    assert isinstance(generator.records[0].request.constraint, GrammarConstraint)
    bad = post(client, text={"format": {**fmt, "schema": {"type": "object", "not": {}}}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "text.format.schema"
    json_object = post(client, text={"format": {"type": "json_object"}})
    assert json_object.status_code == 200
