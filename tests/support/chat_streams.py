"""Streaming greedy chat completions through the ``openai`` SDK, classified as completed, failed or hung.

:class:`StreamResult` / :func:`stream_chat` are what the node-loss tests and
the chaos run count; :data:`PROMPTS` are the prompts they cycle through.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import httpx
import openai
from openai import OpenAI

from support.node_process import DEFAULT_MODEL, NodeProcess

Outcome = Literal["completed", "failed", "hung"]


@dataclass
class StreamResult:
    """One streamed greedy chat completion and how it ended."""

    prompt_index: int
    outcome: Outcome
    text: str
    finish_reason: str | None
    seconds: float
    error: str | None = None


PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Name three colours of the rainbow.",
    "Explain what a network router does in one sentence.",
    "Give me a short tip for learning to cook.",
    "What is two plus two?",
    "Describe the sea to someone who has never seen it.",
    "Why do cats purr?",
)


def client_for(end: NodeProcess, hang_seconds: float) -> OpenAI:
    """An SDK client that never retries and calls a stream hung after ``hang_seconds`` without data."""
    return OpenAI(base_url=end.base_url, api_key="unused", max_retries=0, timeout=hang_seconds)


def stream_chat(client: OpenAI, prompt_index: int, max_tokens: int, deadline_seconds: float) -> StreamResult:
    """Stream one greedy completion of ``PROMPTS[prompt_index]``; classify how it ended.

    *failed*: the API answered with an error (status or an error event in the
    stream); *hung*: no byte for the client's timeout or no end within
    ``deadline_seconds``; *completed*: a finish reason arrived.
    """
    started = time.monotonic()
    text: list[str] = []
    finish_reason: str | None = None
    try:
        stream = client.chat.completions.create(
            model=DEFAULT_MODEL,
            messages=[{"role": "user", "content": PROMPTS[prompt_index % len(PROMPTS)]}],
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
        )
        for chunk in stream:
            if time.monotonic() - started > deadline_seconds:
                stream.close()
                return StreamResult(
                    prompt_index, "hung", "".join(text), None, time.monotonic() - started, "past the deadline"
                )
            for choice in chunk.choices:
                text.append(choice.delta.content or "")
                finish_reason = choice.finish_reason or finish_reason
    except openai.APITimeoutError as error:
        # No data within the client's timeout: the stream hung.
        return StreamResult(
            prompt_index, "hung", "".join(text), None, time.monotonic() - started, repr(error)
        )
    except (openai.APIError, httpx.HTTPError) as error:
        # An error status, an error event in the stream, or a dropped connection: the request failed.
        return StreamResult(
            prompt_index, "failed", "".join(text), None, time.monotonic() - started, repr(error)
        )
    elapsed = time.monotonic() - started
    if finish_reason is None:
        return StreamResult(prompt_index, "failed", "".join(text), None, elapsed, "no finish reason")
    return StreamResult(prompt_index, "completed", "".join(text), finish_reason, elapsed)
