"""Output items -> chat completion chunks, and the whole completion as those chunks collected.

The chat renderer of the shared pipeline (:mod:`language_pipes.api.generation`):
:func:`chat_deltas` turns output items into ``delta.content``,
``delta.reasoning_content`` and ``delta.tool_calls``; :class:`ChatStreamRenderer`
frames them as SSE chunks; :func:`chat_message` collects the same items into
the non-streamed assistant message, so both forms say the same thing.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat import ChatCompletionMessageFunctionToolCall as MessageToolCall
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import (
    ChoiceDelta,
    ChoiceDeltaToolCall,
    ChoiceDeltaToolCallFunction,
)
from openai.types.chat.chat_completion_message_function_tool_call import Function

from language_pipes.api.errors import APIError
from language_pipes.api.output import (
    OutputEnded,
    OutputItem,
    ToolCallArguments,
    ToolCallsParsed,
    ToolCallStarted,
)
from language_pipes.api.reasoning import AnswerDelta, ReasoningDelta
from language_pipes.api.sse import sse_event
from language_pipes.engine.types import Finished

ChatFinishReason = Literal["stop", "length", "tool_calls"]


def finish_reason(ended: OutputEnded) -> ChatFinishReason:
    if ended.called_tool:
        return "tool_calls"
    return "length" if ended.cut_off else "stop"


def _delta(item: OutputItem) -> ChoiceDelta | None:
    if isinstance(item, ReasoningDelta):
        return ChoiceDelta(reasoning_content=item.text)  # type: ignore[call-arg]
    if isinstance(item, AnswerDelta):
        return ChoiceDelta(content=item.text)
    if isinstance(item, ToolCallStarted):
        function = ChoiceDeltaToolCallFunction(name=item.name, arguments="")
        return ChoiceDelta(
            tool_calls=[ChoiceDeltaToolCall(index=0, id=item.call_id, type="function", function=function)]
        )
    if isinstance(item, ToolCallArguments):
        function = ChoiceDeltaToolCallFunction(arguments=item.text)
        return ChoiceDelta(tool_calls=[ChoiceDeltaToolCall(index=0, function=function)])
    if isinstance(item, ToolCallsParsed):
        calls = [
            ChoiceDeltaToolCall(
                index=index,
                id=call.call_id,
                type="function",
                function=ChoiceDeltaToolCallFunction(name=call.name, arguments=call.arguments),
            )
            for index, call in enumerate(item.calls)
        ]
        return ChoiceDelta(tool_calls=calls)
    # The end of reasoning or of a call, and the end of the output, carry no delta of their own.
    return None


def chat_deltas(items: list[OutputItem]) -> list[ChoiceDelta]:
    """The chunk deltas of some output items (the finish_reason comes from ``OutputEnded``)."""
    return [delta for item in items if (delta := _delta(item)) is not None]


def chat_message(items: list[OutputItem]) -> tuple[ChatCompletionMessage, ChatFinishReason]:
    """The assistant message and finish_reason of a whole answer: its streamed items collected."""
    reasoning = "".join(item.text for item in items if isinstance(item, ReasoningDelta))
    answer = "".join(item.text for item in items if isinstance(item, AnswerDelta))
    calls: list[MessageToolCall] = []
    for item in items:
        if isinstance(item, ToolCallStarted):
            calls.append(
                MessageToolCall(
                    id=item.call_id, type="function", function=Function(name=item.name, arguments="")
                )
            )
        elif isinstance(item, ToolCallArguments):
            calls[-1].function.arguments += item.text
        elif isinstance(item, ToolCallsParsed):
            calls.extend(
                MessageToolCall(
                    id=call.call_id,
                    type="function",
                    function=Function(name=call.name, arguments=call.arguments),
                )
                for call in item.calls
            )
    ended = items[-1]
    assert isinstance(ended, OutputEnded)
    extra: dict[str, Any] = {"reasoning_content": reasoning} if reasoning else {}
    if calls:
        message = ChatCompletionMessage(
            role="assistant", content=None, refusal=None, tool_calls=calls, **extra
        )
    else:
        message = ChatCompletionMessage(role="assistant", content=answer, refusal=None, **extra)
    return message, finish_reason(ended)


@dataclass(frozen=True)
class CompletionIdentity:
    """What every chunk of one completion shares."""

    id: str
    created: int
    model: str

    @staticmethod
    def new(model: str) -> CompletionIdentity:
        return CompletionIdentity(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), model)


def _usage(finished: Finished) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=finished.prompt_tokens,
        completion_tokens=finished.completion_tokens,
        total_tokens=finished.prompt_tokens + finished.completion_tokens,
    )


def chat_completion_body(identity: CompletionIdentity, items: list[OutputItem]) -> dict[str, object]:
    """The JSON body of a non-streamed completion."""
    message, reason = chat_message(items)
    ended = items[-1]
    assert isinstance(ended, OutputEnded)
    completion = ChatCompletion(
        id=identity.id,
        object="chat.completion",
        created=identity.created,
        model=identity.model,
        choices=[Choice(index=0, message=message, finish_reason=reason, logprobs=None)],
        usage=_usage(ended.finished),
    )
    return completion.model_dump(mode="json", exclude_unset=True)


class ChatStreamRenderer:
    """Writes one streamed completion: role chunk, delta chunks, finish chunk, [usage chunk]."""

    def __init__(self, identity: CompletionIdentity, include_usage: bool) -> None:
        self.identity = identity
        self.include_usage = include_usage

    def _frame(self, choices: list[ChunkChoice], usage: CompletionUsage | None = None) -> str:
        chunk = ChatCompletionChunk(
            id=self.identity.id,
            object="chat.completion.chunk",
            created=self.identity.created,
            model=self.identity.model,
            choices=choices,
        )
        if self.include_usage:
            chunk.usage = usage  # null on every chunk but the last, as OpenAI does
        return sse_event(chunk.model_dump(mode="json", exclude_unset=True))

    def _choice(self, delta: ChoiceDelta, reason: ChatFinishReason | None = None) -> str:
        return self._frame([ChunkChoice(index=0, delta=delta, finish_reason=reason)])

    def opening(self) -> list[str]:
        return [self._choice(ChoiceDelta(role="assistant", content=""))]

    def render(self, items: list[OutputItem]) -> list[str]:
        frames = [self._choice(delta) for delta in chat_deltas(items)]
        ended = items[-1] if items else None
        if isinstance(ended, OutputEnded):
            frames.append(self._choice(ChoiceDelta(), finish_reason(ended)))
            if self.include_usage:
                frames.append(self._frame([], usage=_usage(ended.finished)))
        return frames

    def heartbeat(self) -> list[str]:
        return []

    def failed(self, error: APIError) -> list[str]:
        return [sse_event(error.body())]
