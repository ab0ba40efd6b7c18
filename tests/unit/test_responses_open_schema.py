"""/v1/responses against the Open Responses models, and the request fields OpenAI's objects carry.

Scripted engine, real HTTP app: every response body and every streamed event is
validated by :mod:`support.open_responses` (the spec's models and the SDK's).
Which side wins where they disagree is written there.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from language_pipes.api.app import create_app
from language_pipes.api.settings import ApiSettings
from support.app_server import AppServer
from support.open_responses import parse_sse, validate_response, validate_stream
from support.responses_http import MODEL, WEATHER_TOOL, make_client, post
from support.scripted_engine import ScriptedCatalog, ScriptedGenerator

CALL_TEXT = '{"name": "get_weather", "arguments": {"city": "Chicago"}}'


def both_forms(client: TestClient, **body: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The non-streamed body and the streamed events of one request, each validated."""
    whole = post(client, **body)
    assert whole.status_code == 200, whole.text
    validate_response(whole.json())
    streamed = post(client, stream=True, **body)
    assert streamed.status_code == 200, streamed.text
    return whole.json(), validate_stream(parse_sse(streamed.text))


@pytest.fixture(scope="module")
def tokenizer(default_tokenizer: Any) -> Any:
    return default_tokenizer


@pytest.mark.parametrize(
    ("pieces", "extra", "item_types"),
    [
        (["Hel", "lo", "!"], {"instructions": "Be brief.", "metadata": {"k": "v"}}, ["message"]),
        (["a", "b", "c"], {"max_output_tokens": 2}, ["message"]),
        (["<think>\nHm.", "\n</think>\n\n", "Four."], {}, ["reasoning", "message"]),
        ([CALL_TEXT[:9], CALL_TEXT[9:]], {"tools": [WEATHER_TOOL]}, ["function_call"]),
        ([], {}, ["message"]),
    ],
    ids=["text", "incomplete", "reasoning", "auto-tool-call", "empty"],
)
def test_every_body_and_event_validates(
    pieces: list[str], extra: dict[str, Any], item_types: list[str]
) -> None:
    client, _ = make_client(pieces)
    body, events = both_forms(client, **extra)
    assert [item["type"] for item in body["output"]] == item_types
    assert [item["type"] for item in events[-1]["response"]["output"]] == item_types


def test_enforced_call_and_json_schema_validate(tokenizer: Any) -> None:
    pieces = [CALL_TEXT[index : index + 5] for index in range(0, len(CALL_TEXT), 5)]
    client, _ = make_client(pieces, tokenizer)
    body, events = both_forms(client, tools=[WEATHER_TOOL], tool_choice="required")
    assert body["output"][0]["type"] == "function_call"
    assert any(event["type"] == "response.function_call_arguments.delta" for event in events)
    client, _ = make_client(['{"a": 1}'], tokenizer)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    body, _ = both_forms(client, text={"format": {"type": "json_schema", "name": "thing", "schema": schema}})
    assert body["text"]["format"] == {
        "type": "json_schema",
        "name": "thing",
        "schema": schema,
        "description": None,
        "strict": False,
    }


def test_failed_stream_validates() -> None:
    generator = ScriptedGenerator(MODEL, ["a", "b", "c"], error="engine broke", fail_after=1)
    app = create_app(ScriptedCatalog(generator), api_keys=[], max_api_jobs=5)
    client = TestClient(app, raise_server_exceptions=False, base_url="http://localhost")
    streamed = post(client, stream=True)
    assert streamed.status_code == 200, streamed.text
    events = validate_stream(parse_sse(streamed.text))
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["code"] == "server_error"


def test_response_fields_are_the_honest_values() -> None:
    client, generator = make_client(["o", "k"])
    body = post(
        client,
        presence_penalty=0.5,
        frequency_penalty=-0.25,
        temperature=0.7,
        top_p=0.9,
        background=False,
        top_logprobs=0,
        service_tier="auto",
        safety_identifier="user-7",
        prompt_cache_key="pk",
        max_tool_calls=3,
    ).json()
    sampling = generator.records[0].request.sampling
    assert (sampling.presence_penalty, sampling.frequency_penalty) == (0.5, -0.25)
    assert body["presence_penalty"] == 0.5 and body["frequency_penalty"] == -0.25
    assert body["temperature"] == 0.7 and body["top_p"] == 0.9
    assert body["background"] is False and body["top_logprobs"] == 0 and body["truncation"] == "disabled"
    assert body["service_tier"] == "default" and body["max_tool_calls"] == 3
    assert body["safety_identifier"] == "user-7" and body["prompt_cache_key"] == "pk"
    assert body["store"] is True and body["reasoning"] == {"effort": None, "summary": None}
    assert isinstance(body["completed_at"], int) and body["completed_at"] >= body["created_at"]
    incomplete = post(client, max_output_tokens=1).json()
    assert incomplete["status"] == "incomplete" and incomplete["completed_at"] is None
    defaults = post(client).json()
    assert (defaults["presence_penalty"], defaults["frequency_penalty"]) == (0.0, 0.0)


def test_unsupported_fields_are_refused_by_name() -> None:
    client, _ = make_client(["x"])
    for extra, param in [
        ({"background": True}, "background"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"max_tool_calls": 0}, "max_tool_calls"),
        ({"truncation": "auto"}, "truncation"),
        ({"service_tier": "priority"}, "service_tier"),
    ]:
        response = post(client, **extra)
        assert response.status_code == 400, (extra, response.text)
        assert response.json()["error"]["param"] == param, (extra, response.json())


def test_store_false_is_reported_and_not_kept() -> None:
    client, _ = make_client(["x"])
    body = post(client, store=False).json()
    assert body["store"] is False
    followup = post(client, previous_response_id=body["id"])
    assert followup.status_code == 400 and followup.json()["error"]["param"] == "previous_response_id"


def test_max_tool_calls_caps_the_calls() -> None:
    two_calls = f"[{CALL_TEXT}, {CALL_TEXT.replace('Chicago', 'Paris')}]"
    client, _ = make_client([two_calls])
    uncapped = post(client, tools=[WEATHER_TOOL]).json()
    capped = post(client, tools=[WEATHER_TOOL], max_tool_calls=1).json()
    validate_response(capped)
    assert [item["type"] for item in uncapped["output"]] == ["function_call", "function_call"]
    assert [item["type"] for item in capped["output"]] == ["function_call"]
    assert json.loads(capped["output"][0]["arguments"]) == {"city": "Chicago"}


def test_codex_request_fields_are_accepted_and_echoed() -> None:
    """The fields Codex sends on every request (captured from codex-cli 0.171.0)."""
    client, _ = make_client(["o", "k"])
    body = post(
        client,
        reasoning={"summary": "auto"},
        include=["reasoning.encrypted_content"],
        client_metadata={"session_id": "s-1", "turn_id": "t-1"},
        store=False,
        prompt_cache_key="s-1",
        parallel_tool_calls=True,
        tool_choice="auto",
        tools=[WEATHER_TOOL],
    )
    assert body.status_code == 200, body.text
    validate_response(body.json())
    assert body.json()["reasoning"] == {"effort": None, "summary": "auto"}
    assert post(client, reasoning={}).json()["reasoning"] == {"effort": None, "summary": None}
    for extra, param in [
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"reasoning": {"summary": "concise"}}, "reasoning.summary"),
        ({"include": ["message.output_text.logprobs"]}, "include[0]"),
        ({"client_metadata": {"k": 1}}, "client_metadata.k"),
    ]:
        response = post(client, **extra)
        assert response.status_code == 400, (extra, response.text)
        assert response.json()["error"]["param"] == param, (extra, response.json())


def test_a_quiet_stream_repeats_in_progress() -> None:
    """A buffered tool answer sends nothing until the end; heartbeats keep idle-timeout clients waiting."""
    generator = ScriptedGenerator(MODEL, [CALL_TEXT[:20], CALL_TEXT[20:]], delay_seconds=0.5)
    app = create_app(
        ScriptedCatalog(generator),
        api_keys=[],
        max_api_jobs=5,
        settings=ApiSettings(stream_heartbeat_seconds=0.1),
    )
    client = TestClient(app, raise_server_exceptions=False, base_url="http://localhost")
    streamed = post(client, stream=True, tools=[WEATHER_TOOL])
    assert streamed.status_code == 200, streamed.text
    events = validate_stream(parse_sse(streamed.text))
    types = [event["type"] for event in events]
    assert types.count("response.in_progress") >= 3, types
    assert types[-1] == "response.completed"
    assert events[-1]["response"]["output"][0]["type"] == "function_call"
    first_item = types.index("response.output_item.added")
    assert all(kind == "response.in_progress" for kind in types[1:first_item])


def test_leaving_a_stream_between_heartbeats_stops_the_generation() -> None:
    generator = ScriptedGenerator(MODEL, ["x"] * 400, delay_seconds=0.2)
    settings = ApiSettings(stream_heartbeat_seconds=0.05)
    with AppServer(ScriptedCatalog(generator), api_keys=[], settings=settings) as server:
        body = {"model": MODEL, "input": "Hi", "stream": True, "tools": [WEATHER_TOOL]}
        with httpx.stream("POST", f"{server.base_url}/responses", json=body, timeout=30) as response:
            lines = response.iter_lines()
            heartbeats = 0
            while heartbeats < 4:
                heartbeats += next(lines) == "event: response.in_progress"
        deadline = time.monotonic() + 20
        while not generator.records[0].closed.is_set():
            assert time.monotonic() < deadline, "the generation kept running after the client left"
            time.sleep(0.05)
    assert not generator.records[0].completed
