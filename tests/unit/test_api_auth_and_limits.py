"""Bearer keys (401 in the envelope) and the exact per-key limit of requests in flight (429)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from language_pipes.api.app import create_app
from language_pipes.api.auth import JobLimiter, check_api_key
from language_pipes.api.errors import APIError
from language_pipes.api.server import ApiServer
from support.scripted_engine import ScriptedCatalog, ScriptedGenerator

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hello!"}]}


def keyed_client(keys: list[str]) -> TestClient:
    app = create_app(ScriptedCatalog(ScriptedGenerator(MODEL, ["hi"])), api_keys=keys, max_api_jobs=5)
    return TestClient(app, raise_server_exceptions=False, base_url="http://localhost")


def assert_unauthorized(response: Any) -> None:
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "foo"}, {"Authorization": "Basic foo"}],
)
def test_configured_keys_are_required_on_every_route(headers: dict[str, str]) -> None:
    client = keyed_client(["foo", "bar"])
    assert_unauthorized(client.post("/v1/chat/completions", json=CHAT, headers=headers))
    assert_unauthorized(client.get("/v1/models", headers=headers))
    assert_unauthorized(client.get(f"/v1/models/{MODEL}", headers=headers))


def test_a_configured_key_is_accepted() -> None:
    client = keyed_client(["foo", "bar"])
    for key in ("foo", "bar"):
        headers = {"Authorization": f"Bearer {key}"}
        assert client.post("/v1/chat/completions", json=CHAT, headers=headers).status_code == 200
        assert client.get("/v1/models", headers=headers).status_code == 200


def test_auth_is_checked_before_the_body() -> None:
    client = keyed_client(["foo"])
    assert_unauthorized(client.post("/v1/chat/completions", content=b"{broken"))


def test_without_keys_any_or_no_key_works() -> None:
    client = keyed_client([])
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
    response = client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer anything"})
    assert response.status_code == 200


def test_client_key_buckets() -> None:
    assert check_api_key(frozenset(), None) == "anonymous"
    assert check_api_key(frozenset(), "Bearer abc") == "abc"
    assert check_api_key(frozenset({"k"}), "bearer k") == "k"
    with pytest.raises(APIError):
        check_api_key(frozenset({"k"}), "Bearer k2")


def test_limiter_allows_exactly_max_jobs_per_key() -> None:
    limiter = JobLimiter(2)
    first, second = limiter.acquire("a"), limiter.acquire("a")
    with pytest.raises(APIError) as rejected:
        limiter.acquire("a")
    assert rejected.value.status == 429 and rejected.value.headers["Retry-After"]
    other_key = limiter.acquire("b")
    first.release()
    first.release()  # idempotent: must not free a second slot
    third = limiter.acquire("a")
    with pytest.raises(APIError):
        limiter.acquire("a")
    for slot in (second, third, other_key):
        slot.release()
    assert limiter.in_flight("a") == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("stream", [False, True])
async def test_requests_in_flight_beyond_the_limit_get_429(stream: bool) -> None:
    generator = ScriptedGenerator(MODEL, ["a", "b"])
    generator.gate = asyncio.Event()
    app = create_app(ScriptedCatalog(generator), api_keys=["k1", "k2"], max_api_jobs=3)
    server = ApiServer(app, "127.0.0.1", 0)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:

            def send(key: str) -> Any:
                headers = {"Authorization": f"Bearer {key}"}
                return client.post("/chat/completions", json={**CHAT, "stream": stream}, headers=headers)

            held = [asyncio.create_task(send("k1")) for _ in range(3)]
            while len(generator.records) < 3:
                await asyncio.sleep(0.01)
            rejected = await send("k1")
            assert rejected.status_code == 429
            assert rejected.headers["Retry-After"] == "1"
            assert rejected.json()["error"]["code"] == "rate_limit_exceeded"
            # Another key has its own allowance.
            other = asyncio.create_task(send("k2"))
            while len(generator.records) < 4:
                await asyncio.sleep(0.01)
            generator.gate.set()
            responses = await asyncio.gather(*held, other)
            assert [response.status_code for response in responses] == [200] * 4
            assert app.state.job_limiter.in_flight("k1") == 0
            # Slots are free again.
            assert (await send("k1")).status_code == 200
    finally:
        await server.stop()
