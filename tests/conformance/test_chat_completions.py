"""The seed's chat examples and the streaming contract, through the official ``openai`` SDK."""

from __future__ import annotations

import json

import httpx
import pytest
from openai import OpenAI

from support.node_process import DEFAULT_MODEL, NodeProcess

pytestmark = pytest.mark.slow

MODEL = DEFAULT_MODEL
QUESTION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is distributed computing?"},
]


def test_seed_basic_usage(client: OpenAI) -> None:
    response = client.chat.completions.create(model=MODEL, messages=QUESTION, max_completion_tokens=200)
    text = response.choices[0].message.content
    assert isinstance(text, str) and text.strip()
    assert response.object == "chat.completion"
    assert response.model == MODEL
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].finish_reason in ("stop", "length")
    usage = response.usage
    assert usage is not None and usage.prompt_tokens > 0
    assert 0 < usage.completion_tokens <= 200
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_seed_streaming_follows_the_chunk_contract(client: OpenAI) -> None:
    request = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a short poem about networks."}],
        "max_completion_tokens": 100,
        "temperature": 0,
    }
    chunks = list(client.chat.completions.create(**request, stream=True))
    assert len({(chunk.id, chunk.created, chunk.model) for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert not chunks[0].choices[0].delta.content
    final = chunks[-1].choices[0]
    assert final.finish_reason in ("stop", "length")
    assert final.delta.content is None and final.delta.role is None
    middle = chunks[1:-1]
    assert middle and all(chunk.choices[0].finish_reason is None for chunk in middle)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)

    whole = client.chat.completions.create(**request)
    assert streamed == whole.choices[0].message.content
    assert final.finish_reason == whole.choices[0].finish_reason


def test_include_usage_ends_with_a_usage_chunk(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hello!"}],
        max_completion_tokens=20,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None and last.usage.completion_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    assert all(chunk.usage is None for chunk in chunks[:-1])
    content_chunks = [chunk for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]
    assert 0 < len(content_chunks) <= last.usage.completion_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_token_limit_gives_finish_reason_length(client: OpenAI, stream: bool) -> None:
    request = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Count from one to one hundred in words."}],
        "max_completion_tokens": 4,
        "temperature": 0,
    }
    if stream:
        chunks = list(
            client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True})
        )
        assert chunks[-2].choices[0].finish_reason == "length"
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    else:
        response = client.chat.completions.create(**request)
        assert response.choices[0].finish_reason == "length"
        assert response.usage is not None and response.usage.completion_tokens == 4


def test_max_tokens_is_an_alias_of_max_completion_tokens(client: OpenAI) -> None:
    messages = [{"role": "user", "content": "Name three colours."}]
    by_alias = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0)
    by_name = client.chat.completions.create(
        model=MODEL, messages=messages, max_completion_tokens=6, temperature=0
    )
    assert by_alias.choices[0].message.content == by_name.choices[0].message.content
    assert by_alias.usage is not None and by_alias.usage.completion_tokens <= 6


def test_developer_role_and_text_parts(client: OpenAI) -> None:
    as_system = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Hi!"}],
        max_completion_tokens=8,
        temperature=0,
    )
    as_developer_parts = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "developer", "content": [{"type": "text", "text": "Answer in one word."}]},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "!"}]},
        ],
        max_completion_tokens=8,
        temperature=0,
    )
    assert as_developer_parts.choices[0].message.content == as_system.choices[0].message.content
    assert as_developer_parts.usage == as_system.usage


def test_stop_sequence_is_honoured_and_not_included(client: OpenAI) -> None:
    request = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Describe the sea in two sentences."}],
        "max_completion_tokens": 40,
        "temperature": 0,
    }
    full = client.chat.completions.create(**request).choices[0].message.content or ""
    words = full.split()
    assert len(words) >= 4, full
    stop_word = words[3]
    cut = client.chat.completions.create(**request, stop=[stop_word, "zzzz-never"]).choices[0]
    assert cut.finish_reason == "stop"
    assert cut.message.content == full[: full.index(stop_word)]


def test_same_seed_gives_the_same_sample(client: OpenAI) -> None:
    request = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_completion_tokens": 20,
        "temperature": 1.0,
        "seed": 1234,
    }
    first = client.chat.completions.create(**request).choices[0].message.content
    second = client.chat.completions.create(**request).choices[0].message.content
    assert first == second


def test_seed_curl_examples(api_node: NodeProcess) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hello!"}], "max_completion_tokens": 50}
    headers = {"Content-Type": "application/json", **api_node.auth_headers()}
    response = httpx.post(f"{api_node.base_url}/chat/completions", json=body, headers=headers, timeout=120)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"]

    with httpx.stream(
        "POST",
        f"{api_node.base_url}/chat/completions",
        json={**body, "stream": True},
        headers=headers,
        timeout=120,
    ) as streamed:
        assert streamed.status_code == 200
        assert streamed.headers["content-type"].startswith("text/event-stream")
        data_lines = [line for line in streamed.iter_lines() if line]
    assert all(line.startswith("data: ") for line in data_lines)
    assert data_lines[-1] == "data: [DONE]"
    first = json.loads(data_lines[0].removeprefix("data: "))
    assert first["choices"][0]["delta"]["role"] == "assistant"
