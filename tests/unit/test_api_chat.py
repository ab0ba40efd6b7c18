"""Chat completions over HTTP against a scripted engine: JSON answers, validation and error mapping."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from language_pipes.api.app import create_app
from support.scripted_engine import ScriptedCatalog, ScriptedGenerator

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
USER_HELLO = [{"role": "user", "content": "Hello!"}]


def make_client(generator: ScriptedGenerator | None = None, **catalog_options: Any) -> TestClient:
    generator = generator or ScriptedGenerator(MODEL, ["Hel", "lo", " there", "!"])
    app = create_app(ScriptedCatalog(generator, **catalog_options), api_keys=[], max_api_jobs=5)
    return TestClient(app, raise_server_exceptions=False, base_url="http://localhost")


def post_chat(client: TestClient, **body: Any) -> Any:
    return client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER_HELLO, **body})


def assert_error(response: Any, status: int, param: str | None, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param, error
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    return error


def test_completion_has_the_openai_shape_and_usage() -> None:
    generator = ScriptedGenerator(MODEL, ["Hel", "lo", " there", "!"])
    response = post_chat(make_client(generator), max_completion_tokens=50)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == MODEL
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there!", "refusal": None},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]
    prompt_tokens = len(generator.records[0].request.prompt_token_ids)
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 4,
        "total_tokens": prompt_tokens + 4,
    }
    assert generator.records[0].request.max_new_tokens == 50


def test_token_limit_reports_length_and_max_tokens_is_an_alias() -> None:
    generator = ScriptedGenerator(MODEL, ["a", "b", "c", "d"])
    body = post_chat(make_client(generator), max_tokens=2).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["content"] == "ab"
    assert generator.records[0].request.max_new_tokens == 2


def test_default_limit_is_1000_capped_by_the_context() -> None:
    generator = ScriptedGenerator(MODEL, ["x"], context_length=100_000)
    post_chat(make_client(generator))
    assert generator.records[0].request.max_new_tokens == 1000
    small = ScriptedGenerator(MODEL, ["x"], context_length=30)
    post_chat(make_client(small), max_completion_tokens=500)
    prompt_tokens = len(small.records[0].request.prompt_token_ids)
    assert small.records[0].request.max_new_tokens == 30 - prompt_tokens


def test_prompt_longer_than_the_context_is_a_400() -> None:
    generator = ScriptedGenerator(MODEL, ["x"], context_length=5)
    assert_error(post_chat(make_client(generator)), 400, "messages", "context_length_exceeded")
    assert generator.records == []


def test_sampling_parameters_and_stop_reach_the_engine() -> None:
    generator = ScriptedGenerator(MODEL, ["x"])
    response = post_chat(
        make_client(generator),
        temperature=0.5,
        top_p=0.9,
        top_k=40,
        min_p=0.05,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        seed=7,
        stop=["\n", "END"],
        n=1,
        user="someone",
    )
    assert response.status_code == 200, response.text
    request = generator.records[0].request
    sampling = request.sampling
    assert (sampling.temperature, sampling.top_p, sampling.top_k, sampling.min_p) == (0.5, 0.9, 40, 0.05)
    assert (sampling.presence_penalty, sampling.frequency_penalty, sampling.seed) == (0.5, -0.5, 7)
    assert request.stop == ("\n", "END")


def test_defaults_when_sampling_is_not_given() -> None:
    generator = ScriptedGenerator(MODEL, ["x"])
    post_chat(make_client(generator), stop="STOP")
    request = generator.records[0].request
    assert (
        request.sampling.temperature == 1.0 and request.sampling.top_k == 0 and request.sampling.seed is None
    )
    assert request.stop == ("STOP",)


def test_developer_is_system_and_text_parts_are_joined() -> None:
    generator = ScriptedGenerator(MODEL, ["x"])
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
    ]
    response = make_client(generator).post(
        "/v1/chat/completions", json={"model": MODEL, "messages": messages}
    )
    assert response.status_code == 200, response.text
    assert generator.last_messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
    ]


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"model": None}, "model"),
        ({"messages": None}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": "Hello"}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages[0].content[0]",
        ),
        ({"messages": [{"role": "user", "content": "hi", "colour": "red"}]}, "messages[0].colour"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 1.5}, "top_k"),
        ({"min_p": 1.1}, "min_p"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"seed": "1"}, "seed"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"max_tokens": "10"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"stream": "yes"}, "stream"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": 3}, "stop"),
        ({"n": 2}, "n"),
        ({"n": 0}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"stream": True, "stream_options": {"include_usage": True, "extra": 1}}, "stream_options.extra"),
        ({"max_tokens": 5, "max_completion_tokens": 6}, "max_tokens"),
        ({"store": True}, "store"),
        ({"best_of": 2}, "best_of"),
        ({"functions": []}, "functions"),
    ],
)
def test_bad_requests_are_400_naming_the_parameter(change: dict[str, Any], param: str) -> None:
    generator = ScriptedGenerator(MODEL, ["x"])
    body: dict[str, Any] = {"model": MODEL, "messages": USER_HELLO}
    for key, value in change.items():
        if value is None:
            del body[key]
        else:
            body[key] = value
    response = make_client(generator).post("/v1/chat/completions", json=body)
    error = assert_error(response, 400, param)
    assert error["type"] == "invalid_request_error"
    assert generator.records == []


def test_harmless_metadata_fields_are_accepted() -> None:
    response = post_chat(
        make_client(),
        metadata={"team": "a"},
        user="u",
        store=False,
        service_tier="auto",
        parallel_tool_calls=False,
        tool_choice="none",
        response_format={"type": "text"},
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"", b"[1, 2]", b'"text"', b'{"model": NaN}', b"\xff\xfe\xfa"],
)
def test_malformed_json_is_a_400(raw: bytes) -> None:
    response = make_client().post(
        "/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"}
    )
    assert_error(response, 400, None)


def test_unknown_model_is_404_model_not_found() -> None:
    error = assert_error(post_chat(make_client(), model="nobody/nothing"), 404, "model", "model_not_found")
    assert "nobody/nothing" in error["message"]


def test_model_without_complete_pipe_is_503() -> None:
    client = make_client(ScriptedGenerator(MODEL, ["x"]), unavailable=(MODEL,))
    assert_error(post_chat(client), 503, "model")


def test_engine_failure_before_output_keeps_its_status() -> None:
    failing = ScriptedGenerator(MODEL, [], reason="error", error="the pipe broke", failure="unavailable")
    response = post_chat(make_client(failing))
    error = assert_error(response, 503, None)
    # What failed, and the request id of the log line with the engine's details; not the details.
    assert "the pipe broke" not in error["message"] and "failed" in error["message"]
    assert response.headers["x-request-id"] in error["message"]
    assert failing.records[0].closed.is_set()


def test_unknown_routes_and_methods_stay_in_the_envelope() -> None:
    client = make_client()
    assert_error(client.get("/v1/embeddings"), 404, None)
    assert_error(client.post("/v1/completions", json={}), 404, None)
    response = client.get("/v1/chat/completions")
    assert_error(response, 405, None)
    assert response.headers["allow"] == "POST"


def test_unexpected_exceptions_become_a_500_envelope() -> None:
    class BrokenGenerator(ScriptedGenerator):
        def encode_chat(self, messages: list[dict[str, object]]) -> list[int]:
            raise ZeroDivisionError("bug")

    error = assert_error(post_chat(make_client(BrokenGenerator(MODEL, ["x"]))), 500, None)
    assert error["type"] == "server_error"
    assert "bug" not in error["message"]
