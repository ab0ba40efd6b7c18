"""The Open Responses compliance checks against a real node, every body and event validated by the spec.

The six checks of the spec's compliance suite (basic response, streaming,
system prompt, tool calling, tool calling streamed, multi-turn), sent as raw
JSON so what is validated is exactly what the node sent. Validation is by
:mod:`support.open_responses` (the ``openresponses-types`` models and the
``openai`` SDK's types); where those two disagree we follow OpenAI's objects,
because the clients people bring (the SDK, Codex, pydantic-ai) are built on
them: timestamps are integers (both accept that), a json_schema format echoes
its schema (the package's model cannot hold one), and the body carries the
SDK's ``output_text`` convenience (the spec ignores it).

Tool calls are forced with ``tool_choice`` so the small default model's choice
does not decide the protocol check. Outputs are kept short.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from support.node_process import DEFAULT_MODEL, NodeProcess
from support.open_responses import parse_sse, validate_response, validate_stream

pytestmark = pytest.mark.slow

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather for a location",
    "parameters": {
        "type": "object",
        "properties": {"location": {"type": "string", "maxLength": 12}},
        "required": ["location"],
        "additionalProperties": False,
    },
}


def create(node: NodeProcess, **body: Any) -> dict[str, Any]:
    response = httpx.post(
        f"{node.base_url}/responses",
        json={"model": DEFAULT_MODEL, "max_output_tokens": 8, **body},
        headers=node.auth_headers(),
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body_json = response.json()
    validate_response(body_json)
    return body_json


def create_streamed(node: NodeProcess, **body: Any) -> list[dict[str, Any]]:
    response = httpx.post(
        f"{node.base_url}/responses",
        json={"model": DEFAULT_MODEL, "max_output_tokens": 8, "stream": True, **body},
        headers=node.auth_headers(),
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return validate_stream(parse_sse(response.text))


def message_text(response: dict[str, Any]) -> str:
    messages = [item for item in response["output"] if item["type"] == "message"]
    assert messages and all(item["role"] == "assistant" for item in messages)
    return "".join(part["text"] for item in messages for part in item["content"])


def test_basic_response(api_node: NodeProcess) -> None:
    response = create(
        api_node, input=[{"type": "message", "role": "user", "content": "Say hello in exactly 3 words."}]
    )
    assert response["object"] == "response" and response["status"] in ("completed", "incomplete")
    assert message_text(response)
    assert (
        response["usage"]["total_tokens"]
        == response["usage"]["input_tokens"] + response["usage"]["output_tokens"]
    )


def test_streaming_response(api_node: NodeProcess) -> None:
    events = create_streamed(api_node, input=[{"type": "message", "role": "user", "content": "Count to 5."}])
    types = [event["type"] for event in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert events[-1]["type"] in ("response.completed", "response.incomplete")
    deltas = "".join(event["delta"] for event in events if event["type"] == "response.output_text.delta")
    assert deltas and deltas == message_text(events[-1]["response"])
    assert events[-1]["response"]["usage"]["output_tokens"] > 0


def test_system_prompt(api_node: NodeProcess) -> None:
    response = create(
        api_node,
        input=[
            {"type": "message", "role": "system", "content": "You are a pirate. Always answer like one."},
            {"type": "message", "role": "user", "content": "Say hello."},
        ],
    )
    assert message_text(response)


def test_tool_calling(api_node: NodeProcess) -> None:
    response = create(
        api_node,
        input=[{"type": "message", "role": "user", "content": "What's the weather like in San Francisco?"}],
        tools=[WEATHER_TOOL],
        tool_choice="required",
        max_output_tokens=32,
    )
    calls = [item for item in response["output"] if item["type"] == "function_call"]
    assert len(calls) == 1 and calls[0]["name"] == "get_weather" and calls[0]["status"] == "completed"
    assert set(json.loads(calls[0]["arguments"])) == {"location"}
    assert response["tools"][0]["name"] == "get_weather" and response["tool_choice"] == "required"


def test_tool_calling_streamed(api_node: NodeProcess) -> None:
    events = create_streamed(
        api_node,
        input=[{"type": "message", "role": "user", "content": "What's the weather like in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=32,
    )
    added = [e for e in events if e["type"] == "response.output_item.added"]
    assert added[0]["item"]["type"] == "function_call" and added[0]["item"]["name"] == "get_weather"
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
    (done,) = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert deltas == done["arguments"] and set(json.loads(deltas)) == {"location"}
    (item_done,) = [e for e in events if e["type"] == "response.output_item.done"]
    assert item_done["item"]["arguments"] == deltas and item_done["item"]["call_id"]
    assert events[-1]["type"] == "response.completed"


def test_multi_turn(api_node: NodeProcess) -> None:
    response = create(
        api_node,
        input=[
            {"type": "message", "role": "user", "content": "My name is Alice."},
            {
                "type": "message",
                "role": "assistant",
                "content": [
                    {"type": "output_text", "text": "Hello Alice! Nice to meet you.", "annotations": []}
                ],
            },
            {"type": "message", "role": "user", "content": "What is my name?"},
        ],
    )
    assert message_text(response)
