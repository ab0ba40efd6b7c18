"""Models, errors, auth and limits of a real node, through the official ``openai`` SDK and raw HTTP."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from support.node_process import DEFAULT_MODEL, NodeLauncher, NodeProcess, single_node_settings

pytestmark = pytest.mark.slow

MODEL = DEFAULT_MODEL
HELLO = [{"role": "user", "content": "Hello!"}]


def test_models_list_and_retrieve(client: OpenAI) -> None:
    assert [model.id for model in client.models.list()] == [MODEL]
    card = client.models.retrieve(MODEL)
    assert card.id == MODEL and card.object == "model"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("nobody/nothing")
    assert missing.value.code == "model_not_found"


def test_unknown_model_is_not_found(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as error:
        client.chat.completions.create(model="Qwen/Qwen3-1.7B", messages=HELLO)
    assert (error.value.code, error.value.param) == ("model_not_found", "model")


@pytest.mark.parametrize(
    ("arguments", "param"),
    [
        ({"temperature": 5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "narrator", "content": "hi"}]}, "messages[0].role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages[0].content[0]",
        ),
        ({"extra_body": {"best_of": 3}}, "best_of"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"tools": [{"type": "web_search"}]}, "tools[0]"),
    ],
)
def test_bad_requests_name_their_parameter(client: OpenAI, arguments: dict[str, Any], param: str) -> None:
    request: dict[str, Any] = {"model": MODEL, "messages": HELLO, **arguments}
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(**request)
    assert error.value.status_code == 400
    assert error.value.param == param
    assert error.value.type == "invalid_request_error"


def test_prompt_beyond_the_context_is_a_400(client: OpenAI) -> None:
    huge = "word " * 10_000
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": huge}])
    assert error.value.code == "context_length_exceeded"


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[]", b'{"model": "x", "messages": NaN}'])
def test_malformed_json_is_a_400_envelope(api_node: NodeProcess, raw: bytes) -> None:
    headers = {"Content-Type": "application/json", **api_node.auth_headers()}
    response = httpx.post(f"{api_node.base_url}/chat/completions", content=raw, headers=headers, timeout=30)
    assert response.status_code == 400
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_unknown_route_is_a_404_envelope(api_node: NodeProcess) -> None:
    response = httpx.post(f"{api_node.base_url}/embeddings", json={}, headers=api_node.auth_headers())
    assert response.status_code == 404
    assert response.json()["error"]["message"]


def test_wrong_or_missing_key_is_401(api_node: NodeProcess) -> None:
    wrong = OpenAI(base_url=api_node.base_url, api_key="not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as error:
        wrong.chat.completions.create(model=MODEL, messages=HELLO)
    assert error.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    missing = httpx.get(f"{api_node.base_url}/models")
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    second_key = OpenAI(base_url=api_node.base_url, api_key="bar", max_retries=0)
    assert [model.id for model in second_key.models.list()] == [MODEL]


class OpenStream:
    """A streamed completion held open (the line iterator is kept: dropping it closes the connection)."""

    def __init__(self, node: NodeProcess, key: str) -> None:
        body = {
            "model": MODEL,
            "messages": [
                {"role": "user", "content": "Write a very long essay about the history of computers."}
            ],
            "max_completion_tokens": 400,
            "stream": True,
            "temperature": 0,
        }
        self.http = httpx.Client(timeout=120)
        self.context = self.http.stream(
            "POST", f"{node.base_url}/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        )
        response = self.context.__enter__()
        assert response.status_code == 200
        self.lines = response.iter_lines()
        assert next(self.lines).startswith("data: ")

    def close(self) -> None:
        self.context.__exit__(None, None, None)
        self.http.close()


def test_max_api_jobs_in_flight_then_429(api_node: NodeProcess, client: OpenAI) -> None:
    streams = [OpenStream(api_node, "foo") for _ in range(2)]
    try:
        with pytest.raises(openai.RateLimitError) as error:
            client.chat.completions.create(model=MODEL, messages=HELLO, max_completion_tokens=1)
        assert error.value.code == "rate_limit_exceeded"
        assert error.value.response.headers["retry-after"]
        # Another key is counted on its own.
        other = OpenAI(base_url=api_node.base_url, api_key="bar", max_retries=0)
        assert other.chat.completions.create(model=MODEL, messages=HELLO, max_completion_tokens=1).choices
    finally:
        for stream in streams:
            stream.close()
    # Disconnecting freed both slots (and stopped both generations): the key works again.
    deadline = time.monotonic() + 10
    while True:
        try:
            client.chat.completions.create(model=MODEL, messages=HELLO, max_completion_tokens=1)
            break
        except openai.RateLimitError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_node_without_keys_accepts_any_key(node_launcher: NodeLauncher) -> None:
    node = node_launcher.start("open-node", **single_node_settings(MODEL))
    node.wait_until_serving(MODEL)
    for key in ("not-needed", "anything"):
        open_client = OpenAI(base_url=node.base_url, api_key=key, max_retries=0, timeout=120)
        response = open_client.chat.completions.create(model=MODEL, messages=HELLO, max_completion_tokens=5)
        assert response.choices[0].message.content is not None
    assert httpx.get(f"{node.base_url}/models").status_code == 200
