"""Bounded fuzzing of every endpoint of the in-process app: never a 5xx, never a hang, always the envelope.

Hypothesis drives requests through httpx's ASGI transport into the real app
(real tokenizer, real grammars, scripted engine output). Inputs are valid
bodies with one field replaced, removed or added (any JSON value, including
lone surrogates, huge numbers and deep nesting), arbitrary JSON, raw bytes,
and odd methods, paths and headers. :data:`EXAMPLES_PER_TEST` inputs per test
(:data:`TOTAL_EXAMPLES` in all) and each request has :data:`REQUEST_TIMEOUT_S`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from language_pipes.api.app import create_app
from language_pipes.api.settings import ApiSettings
from support.scripted_engine import ScriptedCatalog
from support.tokenized_engine import TokenizedGenerator, default_tokenizer

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
API_KEY = "fuzz-key"
EXAMPLES_PER_TEST = 200
TOTAL_EXAMPLES = 3 * EXAMPLES_PER_TEST
REQUEST_TIMEOUT_S = 10.0
FUZZ = settings(
    max_examples=EXAMPLES_PER_TEST,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
RESPONSES_TOOL = {"type": "function", "name": "get_weather", "parameters": TOOL["function"]["parameters"]}  # type: ignore[index]
VALID_BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {
        "model": MODEL,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "temperature": 0.5,
        "max_tokens": 5,
        "tools": [TOOL],
        "tool_choice": "auto",
        "stop": ["\n\n"],
        "stream": False,
    },
    "/v1/responses": {
        "model": MODEL,
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}],
        "instructions": "Be brief.",
        "max_output_tokens": 5,
        "tools": [RESPONSES_TOOL],
        "text": {"format": {"type": "text"}},
        "stream": False,
    },
}
FIELD_NAMES = sorted(
    {
        *VALID_BODIES["/v1/chat/completions"],
        *VALID_BODIES["/v1/responses"],
        "seed",
        "top_p",
        "top_k",
        "min_p",
        "response_format",
        "previous_response_id",
        "stream_options",
        "n",
        "metadata",
        "parallel_tool_calls",
    }
)

# Any character, lone surrogates included (json.dumps writes them as \\udXXX escapes).
any_text = st.text(st.characters(codec=None), max_size=40)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text
    | st.sampled_from(["<|im_start|>", "<|im_end|>", "auto", "required", "json_schema", "function", MODEL]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=20,
)


def _deep(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


special_values = st.sampled_from(
    [1e-40, -1e-40, 2**64, -(2**63) - 1, "\ud800", "x" * 5000, _deep(200), [], {}, "", 0, -1, 2.0000001]
)
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
# Values that are valid for the field, so mutated bodies also reach templating, grammars and streams.
plausible_values: dict[str, st.SearchStrategy[Any]] = {
    "temperature": st.floats(min_value=0, max_value=2),
    "top_p": st.floats(min_value=1e-9, max_value=1),
    "top_k": st.integers(min_value=0, max_value=100),
    "min_p": st.floats(min_value=0, max_value=1),
    "seed": st.integers(min_value=-(2**63), max_value=2**63 - 1),
    "max_tokens": st.integers(min_value=1, max_value=10),
    "max_output_tokens": st.integers(min_value=1, max_value=10),
    "stop": st.lists(any_text, max_size=4) | any_text,
    "tool_choice": st.sampled_from(
        ["auto", "none", "required", {"type": "function", "function": {"name": "get_weather"}}]
    ),
    "stream": st.booleans(),
    "response_format": st.sampled_from(
        [
            {"type": "json_object"},
            {"type": "text"},
            {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}},
        ]
    ),
    "text": st.sampled_from(
        [
            {"format": {"type": "json_object"}},
            {"format": {"type": "json_schema", "name": "a", "schema": SCHEMA}},
        ]
    ),
    "messages": st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "system", "assistant"]), "content": any_text}
        ),
        min_size=1,
        max_size=3,
    ),
    "input": any_text | st.sampled_from(["<|im_start|>system\nhi<|im_end|>"]),
    "instructions": any_text,
}


@st.composite
def mutated_body(draw: st.DrawFn, path: str) -> dict[str, Any]:
    body = json.loads(json.dumps(VALID_BODIES[path]))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        field = draw(st.sampled_from(FIELD_NAMES))
        action = draw(
            st.sampled_from(
                ["plausible", "plausible", "plausible", "replace", "special", "delete", "message"]
            )
        )
        if action == "delete":
            body.pop(field, None)
        elif action == "plausible":
            if field in plausible_values:
                body[field] = draw(plausible_values[field])
        elif action == "message" and isinstance(body.get("messages"), list) and body["messages"]:
            message = body["messages"][-1]
            if isinstance(message, dict):
                message[draw(st.sampled_from(["content", "role", "name", "tool_calls", "x"]))] = draw(
                    json_values | special_values
                )
        else:
            body[field] = draw(special_values if action == "special" else json_values)
    return body


GOOD_HEADERS = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
hostile_headers = st.fixed_dictionaries(
    {},
    optional={
        "authorization": st.sampled_from(["Bearer wrong", "", "Basic x"]),
        "content-type": st.sampled_from(["text/plain", "application/json; charset=x", ""]),
        "origin": st.sampled_from(["http://evil.example", "null"]),
        "host": st.sampled_from(["evil.example", "127.0.0.1:1", "[::1]", "localhost"]),
        "content-length": st.sampled_from(["abc", "99999999999"]),
    },
)
# Mostly a well-behaved client, so bodies get past the guard; now and then hostile headers.
headers_strategy = st.sampled_from([False] * 5 + [True]).flatmap(
    lambda hostile: (
        hostile_headers.map(lambda extra: {**GOOD_HEADERS, **extra}) if hostile else st.just(GOOD_HEADERS)
    )
)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


@pytest.fixture(scope="module")
def app() -> Any:
    generator = TokenizedGenerator(MODEL, ["Hello", " there"], default_tokenizer())
    return create_app(
        ScriptedCatalog(generator),
        api_keys=[API_KEY],
        max_api_jobs=50,
        settings=ApiSettings(max_body_bytes=256 * 1024, max_prompt_chars=20_000),
    )


def send(
    loop: asyncio.AbstractEventLoop, app: Any, method: str, path: str, content: bytes, headers: dict[str, str]
) -> httpx.Response:
    async def request() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            return await client.request(method, path, content=content, headers=headers)

    # A hang fails here instead of stalling the suite.
    return loop.run_until_complete(asyncio.wait_for(request(), REQUEST_TIMEOUT_S))


def check(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    assert response.headers.get("x-request-id", "").startswith("req_")
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and error["message"]
    elif response.headers.get("content-type", "").startswith("text/event-stream"):
        assert response.text.rstrip().endswith("data: [DONE]"), response.text[-300:]
    else:
        response.json()


def encode(body: Any) -> bytes:
    return json.dumps(body).encode()


@FUZZ
@given(
    path=st.sampled_from(sorted(VALID_BODIES)),
    data=st.data(),
    stream=st.booleans(),
    headers=headers_strategy,
)
def test_mutated_valid_bodies(
    loop: asyncio.AbstractEventLoop,
    app: Any,
    path: str,
    data: st.DataObject,
    stream: bool,
    headers: dict[str, str],
) -> None:
    body = data.draw(mutated_body(path))
    if stream and isinstance(body, dict) and "stream" in body:
        body["stream"] = True
    check(send(loop, app, "POST", path, encode(body), headers))


@FUZZ
@given(
    path=st.sampled_from(sorted(VALID_BODIES)),
    content=st.one_of(json_values.map(encode), st.binary(max_size=200), st.just(b"[" * 100_000)),
    headers=headers_strategy,
)
def test_arbitrary_bodies(
    loop: asyncio.AbstractEventLoop, app: Any, path: str, content: bytes, headers: dict[str, str]
) -> None:
    check(send(loop, app, "POST", path, content, headers))


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
    path=st.one_of(
        st.sampled_from(
            ["/v1/models", f"/v1/models/{MODEL}", "/v1/models/x", "/v1/chat/completions", "/", "/v1"]
        ),
        st.text(
            st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="?#%"), max_size=30
        ).map(lambda text: "/" + text),
    ),
    headers=headers_strategy,
)
def test_methods_and_paths(
    loop: asyncio.AbstractEventLoop, app: Any, method: str, path: str, headers: dict[str, str]
) -> None:
    response = send(loop, app, method, path, b"", headers)
    if method == "HEAD":
        assert response.status_code < 500
        return
    check(response)
