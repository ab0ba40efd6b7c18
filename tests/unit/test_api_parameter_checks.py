"""Every parameter out of range is a 400 naming it, never a 500 or a NaN further down.

Run against the scripted engine (what reaches the engine is recorded) and,
where grammars or tokens matter, the real default tokenizer.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from fastapi.testclient import TestClient

from language_pipes.api.app import create_app
from language_pipes.engine.sampling import make_generator, pick_token
from language_pipes.engine.types import FailureKind
from support.scripted_engine import ScriptedCatalog, ScriptedGenerator
from support.tokenized_engine import TokenizedGenerator, default_tokenizer

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
USER = [{"role": "user", "content": "Hello!"}]
GOOD_TOOL = {"type": "function", "function": {"name": "ok", "parameters": {"type": "object"}}}
BAD_SCHEMA = {"type": "object", "properties": {"a": {"type": "string", "pattern": "(("}}}


def make_client(generator: ScriptedGenerator | None = None) -> tuple[TestClient, ScriptedGenerator]:
    generator = generator or ScriptedGenerator(MODEL, ["hi"])
    app = create_app(ScriptedCatalog(generator), api_keys=[], max_api_jobs=5)
    return TestClient(app, raise_server_exceptions=False, base_url="http://localhost"), generator


def chat(client: TestClient, **fields: Any) -> Any:
    return client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, **fields})


def post_raw(client: TestClient, path: str, fields: str) -> Any:
    """POST ``{"model": MODEL, <fields>}`` written as JSON text (so it can hold any escape)."""
    raw = '{"model": "' + MODEL + '", ' + fields + "}"
    return client.post(path, content=raw, headers={"content-type": "application/json"})


def assert_400(response: Any, param: str) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["param"] == param, error
    return error


# ---------------------------------------------------------------- temperature


@pytest.mark.parametrize("temperature", [1e-40, 1e-300, 5e-324, 1e-5])
def test_a_tiny_positive_temperature_is_greedy(temperature: float) -> None:
    client, generator = make_client()
    assert chat(client, temperature=temperature).status_code == 200
    sampling = generator.records[-1].request.sampling
    assert sampling.temperature == 0.0 and sampling.greedy
    # The sampler with what the API passes on: a real token, no NaN.
    logits = __import__("torch").randn(50)
    assert 0 <= pick_token(logits, sampling, [], None, make_generator(0)) < 50


def test_ordinary_temperatures_pass_unchanged() -> None:
    client, generator = make_client()
    for temperature in (0.0, 0.001, 0.7, 2.0):
        assert chat(client, temperature=temperature).status_code == 200
        assert generator.records[-1].request.sampling.temperature == temperature


@pytest.mark.parametrize("temperature", [-1e-40, 2.0000001, 3])
def test_temperature_outside_0_2_is_400(temperature: float) -> None:
    assert_400(chat(make_client()[0], temperature=temperature), "temperature")


# ---------------------------------------------------------------- seed and other integers


@pytest.mark.parametrize("seed", [2**63, 2**64, -(2**63) - 1, 10**30])
def test_a_seed_the_sampler_cannot_take_is_400(seed: int) -> None:
    client, generator = make_client()
    assert_400(chat(client, seed=seed), "seed")
    assert_400(client.post("/v1/responses", json={"model": MODEL, "input": "hi", "seed": seed}), "seed")
    assert generator.records == []


@pytest.mark.parametrize("seed", [2**63 - 1, -(2**63), 0])
def test_seeds_in_range_reach_a_working_sampler(seed: int) -> None:
    client, generator = make_client()
    assert chat(client, seed=seed).status_code == 200
    make_generator(generator.records[-1].request.sampling.seed)  # does not raise


def test_top_k_is_bounded() -> None:
    assert_400(chat(make_client()[0], top_k=2**31), "top_k")
    assert chat(make_client()[0], top_k=2**31 - 1).status_code == 200


# ---------------------------------------------------------------- text that is not text


def test_a_lone_surrogate_in_content_is_400_naming_it() -> None:
    client, generator = make_client()
    response = post_raw(
        client, "/v1/chat/completions", '"messages": [{"role": "user", "content": "hi \\ud800"}]'
    )
    error = assert_400(response, "messages[0].content")
    assert error["code"] == "invalid_unicode"
    part = '{"type": "input_text", "text": "\\udfff"}'
    response = post_raw(client, "/v1/responses", '"input": [{"role": "user", "content": [' + part + "]}]")
    assert_400(response, "input[0].content[0].text")
    assert generator.records == []


def test_a_lone_surrogate_with_a_real_tokenizer_is_400_not_500() -> None:
    client, _ = make_client(TokenizedGenerator(MODEL, ["hi"], default_tokenizer()))
    response = post_raw(
        client, "/v1/chat/completions", '"messages": [{"role": "user", "content": "\\ud83d"}]'
    )
    assert_400(response, "messages[0].content")
    # A proper surrogate pair is one character and fine.
    pair = '"messages": [{"role": "user", "content": "\\ud83d\\ude00"}]'
    response = post_raw(client, "/v1/chat/completions", pair)
    assert response.status_code == 200, response.text


def test_absurdly_nested_json_is_400() -> None:
    nested: Any = {"type": "object"}
    for _ in range(80):
        nested = {"type": "array", "items": nested}
    tool = {"type": "function", "function": {"name": "deep", "parameters": nested}}
    error = assert_400(chat(make_client()[0], tools=[tool]), "tools")
    assert "nested" in error["message"]


# ---------------------------------------------------------------- stop strings


def test_stop_strings_are_bounded_in_count_and_length() -> None:
    client, _ = make_client()
    assert_400(chat(client, stop=["a", "b", "c", "d", "e"]), "stop")
    assert_400(chat(client, stop="x" * 257), "stop")
    assert_400(chat(client, stop=["ok", "x" * 257]), "stop[1]")
    assert chat(client, stop=["x" * 256, "y"]).status_code == 200


# ---------------------------------------------------------------- schemas that cannot compile


def test_an_uncompilable_tool_schema_names_its_index_in_responses() -> None:
    client, generator = make_client(TokenizedGenerator(MODEL, ["hi"], default_tokenizer()))
    bad_tool = {"type": "function", "name": "bad", "parameters": BAD_SCHEMA}
    good_tool = {"type": "function", "name": "ok", "parameters": {"type": "object"}}
    body = {"model": MODEL, "input": "hi", "tools": [good_tool, bad_tool], "tool_choice": "required"}
    assert_400(client.post("/v1/responses", json=body), "tools[1].parameters")
    body["tool_choice"] = {"type": "function", "name": "bad"}
    assert_400(client.post("/v1/responses", json=body), "tools[1].parameters")
    assert generator.records == []


def test_an_uncompilable_schema_names_its_index_in_chat() -> None:
    client, generator = make_client(TokenizedGenerator(MODEL, ["hi"], default_tokenizer()))
    bad_tool = {"type": "function", "function": {"name": "bad", "parameters": BAD_SCHEMA}}
    response = chat(client, tools=[GOOD_TOOL, bad_tool], tool_choice="required")
    assert_400(response, "tools[1].function.parameters")
    response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": BAD_SCHEMA}}
    assert_400(chat(client, response_format=response_format), "response_format.json_schema.schema")
    assert generator.records == []


# ---------------------------------------------------------------- 5xx bodies


def test_a_500_names_the_request_id_and_logs_the_details(caplog: pytest.LogCaptureFixture) -> None:
    class BrokenGenerator(ScriptedGenerator):
        def encode_chat(self, messages: list[dict[str, object]]) -> list[int]:
            raise ZeroDivisionError("secret internal detail")

    client, _ = make_client(BrokenGenerator(MODEL, ["x"]))
    with caplog.at_level(logging.ERROR, logger="language_pipes.api"):
        response = chat(client)
    assert response.status_code == 500
    request_id = response.headers["x-request-id"]
    message = response.json()["error"]["message"]
    assert request_id in message and "secret" not in message
    logged = [record for record in caplog.records if request_id in record.getMessage()]
    assert logged and "secret internal detail" in (logged[0].exc_text or "")


@pytest.mark.parametrize(("failure", "status"), [("internal", 500), ("unavailable", 503), ("timeout", 504)])
def test_a_5xx_from_the_engine_keeps_the_details_in_the_log(
    caplog: pytest.LogCaptureFixture, failure: FailureKind, status: int
) -> None:
    failing = ScriptedGenerator(
        MODEL, [], reason="error", error="ConnectionError('10.0.0.7:5000 reset')", failure=failure
    )
    client, _ = make_client(failing)
    with caplog.at_level(logging.WARNING, logger="language_pipes.api.errors"):
        for path, body in (
            ("/v1/chat/completions", {"model": MODEL, "messages": USER}),
            ("/v1/responses", {"model": MODEL, "input": "hi"}),
        ):
            response = client.post(path, json=body)
            assert response.status_code == status
            error = response.json()["error"]
            assert "10.0.0.7" not in json.dumps(error)
            assert error["type"] == ("service_unavailable" if status == 503 else "server_error")
            assert response.headers["x-request-id"] in error["message"]
    assert any("10.0.0.7" in record.getMessage() for record in caplog.records)
