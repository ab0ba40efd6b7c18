"""Server-sent chat chunks: the chunk contract, errors after streaming began, and disconnects."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from language_pipes.api.app import create_app
from language_pipes.api.server import ApiServer
from support.scripted_engine import ScriptedCatalog, ScriptedGenerator

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
USER_HELLO = [{"role": "user", "content": "Hello!"}]


def stream_events(generator: ScriptedGenerator, **body: Any) -> tuple[int, str, list[Any]]:
    app = create_app(ScriptedCatalog(generator), api_keys=[], max_api_jobs=5)
    client = TestClient(app, raise_server_exceptions=False, base_url="http://localhost")
    response = client.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": USER_HELLO, "stream": True, **body}
    )
    frames = [frame for frame in response.text.split("\n\n") if frame]
    assert all(frame.startswith("data: ") for frame in frames), frames
    payloads = [frame.removeprefix("data: ") for frame in frames]
    events = [payload if payload == "[DONE]" else json.loads(payload) for payload in payloads]
    return response.status_code, response.headers.get("content-type", ""), events


def test_chunk_sequence_role_content_finish_done() -> None:
    status, content_type, events = stream_events(ScriptedGenerator(MODEL, ["Hel", "lo", "", " you"]))
    assert status == 200 and content_type.startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({(chunk["id"], chunk["created"], chunk["model"]) for chunk in chunks}) == 1
    assert all(chunk["object"] == "chat.completion.chunk" and "usage" not in chunk for chunk in chunks)
    assert chunks[0]["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
    ]
    contents = [chunk["choices"][0]["delta"] for chunk in chunks[1:-1]]
    assert contents == [{"content": "Hel"}, {"content": "lo"}, {"content": " you"}]
    assert chunks[-1]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]


def test_include_usage_adds_a_final_usage_chunk() -> None:
    generator = ScriptedGenerator(MODEL, ["a", "b", "c"])
    _, _, events = stream_events(generator, stream_options={"include_usage": True}, max_tokens=2)
    *chunks, done = events
    assert done == "[DONE]"
    assert [chunk["usage"] for chunk in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    prompt_tokens = len(generator.records[0].request.prompt_token_ids)
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 2,
        "total_tokens": prompt_tokens + 2,
    }


def test_failure_before_any_output_is_a_plain_http_error() -> None:
    failing = ScriptedGenerator(MODEL, [], reason="error", error="no route", failure="unavailable")
    app = create_app(ScriptedCatalog(failing), api_keys=[], max_api_jobs=5)
    response = TestClient(app, base_url="http://localhost").post(
        "/v1/chat/completions", json={"model": MODEL, "messages": USER_HELLO, "stream": True}
    )
    assert response.status_code == 503
    assert "no route" not in response.json()["error"]["message"]
    assert response.headers["x-request-id"] in response.json()["error"]["message"]


def test_failure_after_streaming_began_sends_an_error_event_then_done() -> None:
    generator = ScriptedGenerator(MODEL, ["a", "b", "c"], fail_after=2, error="node lost")
    status, _, events = stream_events(generator)
    assert status == 200
    assert events[-1] == "[DONE]"
    error = events[-2]["error"]
    assert (error["type"], error["param"], error["code"]) == ("server_error", None, None)
    # What failed and the request id, not the engine's own text (that goes to the log).
    assert "node lost" not in error["message"] and "request id req_" in error["message"]
    assert [chunk["choices"][0]["delta"].get("content") for chunk in events[1:-2]] == ["a", "b"]
    assert not any(chunk["choices"][0]["finish_reason"] for chunk in events[:-2])
    assert generator.records[0].closed.is_set()


@pytest.mark.asyncio
@pytest.mark.parametrize("stream", [True, False])
async def test_client_disconnect_closes_the_generation(stream: bool) -> None:
    generator = ScriptedGenerator(MODEL, ["tick"] * 10_000, delay_seconds=0.01)
    app = create_app(ScriptedCatalog(generator), api_keys=[], max_api_jobs=1)
    server = ApiServer(app, "127.0.0.1", 0)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            body = {"model": MODEL, "messages": USER_HELLO, "stream": stream}
            if stream:
                async with client.stream("POST", "/chat/completions", json=body) as response:
                    assert response.status_code == 200
                    lines = response.aiter_lines()
                    assert (await anext(lines)).startswith("data: ")
                    # A stream holds its job slot while it is being sent.
                    assert app.state.job_limiter.in_flight("anonymous") == 1
            else:
                request = asyncio.create_task(client.post("/chat/completions", json=body))
                await asyncio.wait_for(generator_started(generator), 5)
                request.cancel()
            record = generator.records[0]
            await asyncio.wait_for(record.closed.wait(), 2)
            assert not record.completed
            # The job slot came back: with max_api_jobs=1 a new request is accepted.
            response = await client.get("/models")
            limiter = app.state.job_limiter
            for _ in range(100):
                if limiter.in_flight("anonymous") == 0:
                    break
                await asyncio.sleep(0.01)
            assert limiter.in_flight("anonymous") == 0
            assert response.status_code == 200
    finally:
        await server.stop()


async def generator_started(generator: ScriptedGenerator) -> None:
    while not generator.records:
        await asyncio.sleep(0.01)
    await generator.records[0].started.wait()
