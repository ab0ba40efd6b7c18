"""What a request must look like before the API does any work: size, content type, Host, Origin.

Each refusal is in OpenAI's error envelope and carries the request id header.
Bodies are sent through httpx's ASGI transport, which hands the app one chunk
per ``receive``, so a test can see how much of a streamed body was read.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from language_pipes.api.app import create_app
from language_pipes.api.guard import request_rejection
from language_pipes.api.settings import ApiSettings, host_is_allowed
from language_pipes.config import parse_config
from support.scripted_engine import ScriptedCatalog, ScriptedGenerator

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hello!"}]}


def make_app(settings: ApiSettings | None = None, generator: ScriptedGenerator | None = None) -> Any:
    generator = generator or ScriptedGenerator(MODEL, ["hi"])
    return create_app(ScriptedCatalog(generator), api_keys=[], max_api_jobs=5, settings=settings)


def client(settings: ApiSettings | None = None, host: str = "localhost") -> TestClient:
    return TestClient(make_app(settings), raise_server_exceptions=False, base_url=f"http://{host}")


def assert_envelope(response: httpx.Response, status: int, code: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert response.headers["x-request-id"].startswith("req_")
    return error


# ---------------------------------------------------------------- body size


def test_a_declared_oversized_body_is_413_without_reading_it() -> None:
    settings = ApiSettings(max_body_bytes=2000)
    body = json.dumps({**CHAT, "user": "x" * 3000})
    response = client(settings).post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    error = assert_envelope(response, 413, "request_too_large")
    assert "2000" in error["message"]


def test_the_default_limit_is_4_mib() -> None:
    body = json.dumps({**CHAT, "user": "x" * (4 * 1024 * 1024)})
    response = client().post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert_envelope(response, 413, "request_too_large")
    assert ApiSettings().max_body_bytes == 4 * 1024 * 1024


@pytest.mark.asyncio
async def test_an_endless_chunked_body_is_cut_off_at_the_limit() -> None:
    chunks_sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal chunks_sent
        yield b'{"model": "m", "user": "'
        while True:
            chunks_sent += 1
            yield b"x" * 1024

    transport = httpx.ASGITransport(app=make_app(ApiSettings(max_body_bytes=10_000)))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
        response = await asyncio.wait_for(
            http.post(
                "/v1/chat/completions", content=endless(), headers={"content-type": "application/json"}
            ),
            timeout=10,
        )
    assert_envelope(response, 413, "request_too_large")
    assert chunks_sent <= 12  # read up to the limit, not on and on


@pytest.mark.parametrize("length", ["abc", "\u00b2", "-1", "1" * 30])
def test_a_bad_content_length_is_400(length: str) -> None:
    scope = {"type": "http", "headers": [(b"content-length", length.encode("latin-1"))]}
    rejection = request_rejection(ApiSettings(), scope)
    assert rejection is not None and rejection.status == 400
    response = client().post(
        "/v1/chat/completions",
        content=b"{}",
        headers={"content-type": "application/json", "content-length": "abc"},
    )
    assert response.status_code == 400


def test_a_small_body_still_works() -> None:
    assert client(ApiSettings(max_body_bytes=2000)).post("/v1/chat/completions", json=CHAT).status_code == 200


# ---------------------------------------------------------------- content type


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; x=y"]
)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
def test_post_bodies_must_be_declared_json(content_type: str | None, path: str) -> None:
    headers = {"content-type": content_type} if content_type else {}
    body = {**CHAT, "input": "hi"} if path == "/v1/responses" else CHAT
    if path == "/v1/responses":
        body.pop("messages")
    response = client().post(path, content=json.dumps(body), headers=headers)
    error = assert_envelope(response, 415, "unsupported_media_type")
    assert "application/json" in error["message"]


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON"]
)
def test_json_content_types_are_accepted(content_type: str) -> None:
    response = client().post(
        "/v1/chat/completions", content=json.dumps(CHAT), headers={"content-type": content_type}
    )
    assert response.status_code == 200, response.text


# ---------------------------------------------------------------- browsers: Origin


def test_a_cross_origin_browser_request_is_403() -> None:
    for path, method in (("/v1/chat/completions", "POST"), ("/v1/models", "GET")):
        response = client().request(method, path, json=CHAT, headers={"origin": "http://evil.example"})
        error = assert_envelope(response, 403, "origin_not_allowed")
        assert "api_allowed_origins" in error["message"]


def test_a_cross_site_fetch_without_origin_is_403() -> None:
    response = client().get("/v1/models", headers={"sec-fetch-site": "cross-site"})
    assert_envelope(response, 403, "origin_not_allowed")


def test_clients_without_origin_keep_working() -> None:
    assert client().post("/v1/chat/completions", json=CHAT).status_code == 200
    assert client().get("/v1/models", headers={"sec-fetch-site": "none"}).status_code == 200


def test_an_allowed_origin_gets_cors_answers() -> None:
    settings = ApiSettings(allowed_origins=frozenset({"http://localhost:3000"}))
    allowed = client(settings)
    preflight = allowed.options(
        "/v1/chat/completions",
        headers={
            "origin": "http://localhost:3000",
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
    response = allowed.post("/v1/chat/completions", json=CHAT, headers={"origin": "http://localhost:3000"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "http://localhost:3000"
    other = allowed.post("/v1/chat/completions", json=CHAT, headers={"origin": "http://localhost:4000"})
    assert_envelope(other, 403, "origin_not_allowed")


# ---------------------------------------------------------------- Host (DNS rebinding)


def test_a_host_name_that_is_not_ours_is_403() -> None:
    response = client(host="attacker.example:8000").post("/v1/chat/completions", json=CHAT)
    error = assert_envelope(response, 403, "host_not_allowed")
    assert "api_allowed_hosts" in error["message"]


@pytest.mark.parametrize(
    "host", ["localhost:8000", "127.0.0.1:8000", "[::1]:8000", "192.168.1.20", "app.localhost"]
)
def test_loopback_names_and_ip_literals_are_served(host: str) -> None:
    assert client(host=host).post("/v1/chat/completions", json=CHAT).status_code == 200


def test_configured_hosts_and_network_ip_are_served() -> None:
    config = parse_config(
        {"node_id": "n", "network_ip": "mybox.lan", "api_allowed_hosts": ["api.example.org"]}, source="t"
    )
    settings = ApiSettings.from_config(config)
    assert host_is_allowed(settings, "mybox.lan:8000")
    assert host_is_allowed(settings, "API.example.org")
    assert not host_is_allowed(settings, "other.example.org")
    assert client(settings, host="api.example.org").post("/v1/chat/completions", json=CHAT).status_code == 200
    everything = ApiSettings(allowed_hosts=frozenset({"*"}))
    assert client(everything, host="anything.example").get("/v1/models").status_code == 200


def test_config_keys_have_their_defaults() -> None:
    settings = ApiSettings.from_config(parse_config({"node_id": "n"}, source="t"))
    assert settings.max_body_bytes == 4 * 1024 * 1024
    assert settings.max_prompt_chars == 1_000_000
    assert settings.allowed_origins == frozenset()
    assert settings.response_store_bytes == 64 * 1024 * 1024


# ---------------------------------------------------------------- prompt size


def test_a_prompt_over_the_character_cap_is_400_before_tokenizing() -> None:
    generator = ScriptedGenerator(MODEL, ["hi"])
    app = make_app(ApiSettings(max_prompt_chars=100), generator)
    http = TestClient(app, raise_server_exceptions=False, base_url="http://localhost")
    long_chat = {**CHAT, "messages": [{"role": "user", "content": "x" * 200}]}
    error = assert_envelope(http.post("/v1/chat/completions", json=long_chat), 400, "prompt_too_large")
    assert error["param"] == "messages"
    response = http.post("/v1/responses", json={"model": MODEL, "input": "y" * 200})
    assert assert_envelope(response, 400, "prompt_too_large")["param"] == "input"
    assert generator.last_messages == []  # never reached the template
    assert http.post("/v1/chat/completions", json=CHAT).status_code == 200
