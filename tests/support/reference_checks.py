"""The assertions every multi-node pipe test makes: greedy output through the SDK equals the reference.

:class:`support.cluster.ReferenceModel` runs transformers in this process on the
same chat-rendered prompt; a pipe of any shape must give the same tokens.
"""

from __future__ import annotations

from openai import OpenAI

from support.cluster import DEFAULT_MODEL, ReferenceModel


def assert_completion_matches_reference(
    client: OpenAI,
    reference: ReferenceModel,
    messages: list[dict[str, str]],
    max_tokens: int,
    model: str = DEFAULT_MODEL,
) -> str:
    """A greedy, non-streamed completion: same text, token counts and finish reason as transformers.

    Returns the completion's text.
    """
    expected = reference.complete(messages, max_tokens)
    completion = client.chat.completions.create(
        model=model,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=max_tokens,
        temperature=0,
    )
    assert completion.choices[0].message.content == expected.text
    assert completion.usage is not None
    assert completion.usage.completion_tokens == len(expected.token_ids)
    assert completion.usage.prompt_tokens == len(reference.prompt_ids(messages))
    assert completion.choices[0].finish_reason == expected.finish_reason
    return expected.text


def assert_stream_matches_reference(
    client: OpenAI,
    reference: ReferenceModel,
    messages: list[dict[str, str]],
    max_tokens: int,
    include_usage: bool = False,
    model: str = DEFAULT_MODEL,
) -> None:
    """A greedy stream: its deltas join to transformers' text (and its usage chunk counts the tokens)."""
    expected = reference.complete(messages, max_tokens)
    stream = client.chat.completions.create(
        model=model,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        **({"stream_options": {"include_usage": True}} if include_usage else {}),  # type: ignore[arg-type]
    )
    text = ""
    usage = None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == expected.text
    if include_usage:
        assert usage is not None and usage.completion_tokens == len(expected.token_ids)
