"""Output items -> Responses output items and stream events: the Responses renderer.

The Responses side of the shared pipeline (:mod:`language_pipes.api.generation`):
:func:`builder_events` hands each :data:`~language_pipes.api.output.OutputItem`
to the :class:`~language_pipes.api.responses_stream.ResponseBuilder`, which
keeps the ``Response`` snapshot and returns the typed events.
:class:`ResponsesStreamRenderer` frames those events for a stream; the
non-streamed answer runs the same items through a builder and returns its
final snapshot.
"""

from __future__ import annotations

from collections.abc import Callable

from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseStreamEvent

from language_pipes.api.errors import APIError
from language_pipes.api.output import (
    OutputEnded,
    OutputItem,
    ToolCallArguments,
    ToolCallEnded,
    ToolCallsParsed,
    ToolCallStarted,
)
from language_pipes.api.reasoning import AnswerDelta, ReasoningDelta, ReasoningEnded
from language_pipes.api.responses_settings import whole_seconds
from language_pipes.api.responses_stream import ResponseBuilder
from language_pipes.api.sse import sse_event


def event_frame(event: ResponseStreamEvent) -> str:
    """The SSE frame of one event (named, as OpenAI sends them)."""
    data = event.model_dump(mode="json", exclude_unset=True, by_alias=True)
    if isinstance(data.get("response"), dict):
        whole_seconds(data["response"])
    return sse_event(data, event=event.type)


def _ended(builder: ResponseBuilder, ended: OutputEnded) -> list[ResponseStreamEvent]:
    events: list[ResponseStreamEvent] = []
    if not any(isinstance(item, ResponseOutputMessage | ResponseFunctionToolCall) for item in builder.output):
        events.extend(builder.open_message())  # an empty answer is still a message
    finished = ended.finished
    events.extend(
        builder.finish(
            "incomplete" if ended.cut_off else "completed",
            input_tokens=finished.prompt_tokens,
            output_tokens=finished.completion_tokens,
            reasoning_tokens=ended.reasoning_tokens,
        )
    )
    return events


def _item_events(builder: ResponseBuilder, item: OutputItem) -> list[ResponseStreamEvent]:
    if isinstance(item, ReasoningDelta):
        return builder.add_reasoning(item.text)
    if isinstance(item, ReasoningEnded):
        return builder.end_reasoning()
    if isinstance(item, AnswerDelta):
        return builder.add_text(item.text)
    if isinstance(item, ToolCallStarted):
        return builder.start_function_call(item.name, item.call_id)
    if isinstance(item, ToolCallArguments):
        return builder.add_arguments(item.text)
    if isinstance(item, ToolCallEnded):
        return builder.end_function_call(status="completed" if item.complete else "incomplete")
    if isinstance(item, ToolCallsParsed):
        events: list[ResponseStreamEvent] = []
        for call in item.calls:
            events.extend(builder.function_call(call.name, call.arguments, call.call_id))
        return events
    return _ended(builder, item)


def builder_events(builder: ResponseBuilder, items: list[OutputItem]) -> list[ResponseStreamEvent]:
    """Feed output items to the builder; returns the events they make."""
    return [event for item in items for event in _item_events(builder, item)]


class ResponsesStreamRenderer:
    """Writes one streamed response; ``on_completed`` runs once the response ended without failing."""

    def __init__(self, builder: ResponseBuilder, on_completed: Callable[[], None]) -> None:
        self.builder = builder
        self.on_completed = on_completed

    def opening(self) -> list[str]:
        return [event_frame(event) for event in self.builder.start()]

    def render(self, items: list[OutputItem]) -> list[str]:
        frames = [event_frame(event) for event in builder_events(self.builder, items)]
        if items and isinstance(items[-1], OutputEnded):
            self.on_completed()
        return frames

    def heartbeat(self) -> list[str]:
        return [event_frame(event) for event in self.builder.heartbeat()]

    def failed(self, error: APIError) -> list[str]:
        return [event_frame(event) for event in self.builder.fail(error.message)]
