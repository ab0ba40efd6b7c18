"""Builds a Responses API answer as the ``openai`` package's typed stream events.

:class:`ResponseBuilder` is fed what the model produced (reasoning text,
answer text, tool calls) and returns, for each step, the events to send, each
with the next ``sequence_number``. It also keeps the ``Response`` snapshot, so
the non-streamed endpoint runs the very same builder and returns its final
snapshot: streamed and non-streamed answers cannot drift apart.

Event order per item: ``output_item.added`` → parts/deltas → ``…done`` →
``output_item.done``; an item is closed before the next one opens, and the
response ends with ``response.completed`` / ``response.incomplete`` /
``response.failed``.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Literal

from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseError,
    ResponseFailedEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseFunctionToolCall,
    ResponseIncompleteEvent,
    ResponseInProgressEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseReasoningItem,
    ResponseReasoningSummaryPartAddedEvent,
    ResponseReasoningSummaryPartDoneEvent,
    ResponseReasoningSummaryTextDeltaEvent,
    ResponseReasoningSummaryTextDoneEvent,
    ResponseStreamEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
    ResponseUsage,
)
from openai.types.responses.response import IncompleteDetails
from openai.types.responses.response_reasoning_item import Summary
from openai.types.responses.response_reasoning_summary_part_added_event import Part as SummaryPartAdded
from openai.types.responses.response_reasoning_summary_part_done_event import Part as SummaryPartDone
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

from language_pipes.api import tool_calls
from language_pipes.api.responses_settings import ResponseSettings, echoed_fields, whole_seconds

ItemStatus = Literal["in_progress", "completed", "incomplete"]
OpenKind = Literal["reasoning", "message", "function_call"]
ResponseItem = ResponseReasoningItem | ResponseOutputMessage | ResponseFunctionToolCall
EndStatus = Literal["completed", "incomplete"]


# The events that carry the whole response snapshot, by their type.
_RESPONSE_EVENTS: dict[str, type[ResponseStreamEvent]] = {
    "response.created": ResponseCreatedEvent,
    "response.in_progress": ResponseInProgressEvent,
    "response.completed": ResponseCompletedEvent,
    "response.incomplete": ResponseIncompleteEvent,
    "response.failed": ResponseFailedEvent,
}


def new_item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


class ResponseBuilder:
    """The output items and events of one response; not thread-safe (one request, one task)."""

    def __init__(self, settings: ResponseSettings, response_id: str | None = None) -> None:
        self.settings = settings
        self.response_id = response_id or new_item_id("resp")
        self.created_at = int(time.time())
        self.output: list[ResponseItem] = []
        self._sequence = 0
        self._open: OpenKind | None = None
        self._open_text = ""
        self.status: Literal["in_progress", "completed", "incomplete", "failed"] = "in_progress"
        self.usage: ResponseUsage | None = None
        self.error: ResponseError | None = None
        # Set when the response ends with status "completed" (as in OpenAI's objects).
        self.completed_at: int | None = None

    # ---------------------------------------------------------------- snapshot

    def snapshot(self) -> Response:
        settings = self.settings
        fields: dict[str, Any] = {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "model": settings.model,
            "status": self.status,
            "output": [item.model_copy(deep=True) for item in self.output],
            "incomplete_details": (
                IncompleteDetails(reason="max_output_tokens") if self.status == "incomplete" else None
            ),
            "error": self.error,
            "usage": self.usage,
            "completed_at": self.completed_at,
            **echoed_fields(settings),
        }
        return Response.model_validate(fields)

    @property
    def output_text(self) -> str:
        return "".join(
            part.text
            for item in self.output
            if isinstance(item, ResponseOutputMessage)
            for part in item.content
            if isinstance(part, ResponseOutputText)
        )

    def body(self) -> dict[str, Any]:
        """The final JSON body (with the SDK's convenience ``output_text`` added, as the seed documents)."""
        body = whole_seconds(self.snapshot().model_dump(mode="json", exclude_unset=True, by_alias=True))
        body["output_text"] = self.output_text
        return body

    def _next(self) -> int:
        number = self._sequence
        self._sequence += 1
        return number

    def _placed(self, item_id: str | None = None) -> dict[str, Any]:
        """What places an event: the next sequence number, the item's id (the last item's by default)
        and its index."""
        return {
            "sequence_number": self._next(),
            "item_id": item_id or self.output[-1].id or "",
            "output_index": self._index,
        }

    @property
    def _index(self) -> int:
        return len(self.output) - 1

    def _response_event(self, event_type: str) -> ResponseStreamEvent:
        """An event that carries the whole response as it now is."""
        event_class: Any = _RESPONSE_EVENTS[event_type]
        return event_class(type=event_type, sequence_number=self._next(), response=self.snapshot())

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> list[ResponseStreamEvent]:
        return [
            self._response_event("response.created"),
            self._response_event("response.in_progress"),
        ]

    def heartbeat(self) -> list[ResponseStreamEvent]:
        """``response.in_progress`` again: a stream that is busy but has nothing new to send."""
        return [self._response_event("response.in_progress")]

    def finish(
        self, status: EndStatus, *, input_tokens: int, output_tokens: int, reasoning_tokens: int = 0
    ) -> list[ResponseStreamEvent]:
        """Close any open item and end the response."""
        events = self.close_open_item("completed" if status == "completed" else "incomplete")
        self.status = status
        self.usage = ResponseUsage(
            input_tokens=input_tokens,
            input_tokens_details=InputTokensDetails(cached_tokens=0, cache_write_tokens=0),
            output_tokens=output_tokens,
            output_tokens_details=OutputTokensDetails(reasoning_tokens=reasoning_tokens),
            total_tokens=input_tokens + output_tokens,
        )
        if status == "completed":
            self.completed_at = int(time.time())
            events.append(self._response_event("response.completed"))
        else:
            events.append(self._response_event("response.incomplete"))
        return events

    def fail(self, message: str) -> list[ResponseStreamEvent]:
        """End with ``response.failed`` (open items are closed as incomplete)."""
        events = self.close_open_item("incomplete")
        self.status = "failed"
        self.error = ResponseError(code="server_error", message=message)
        events.append(self._response_event("response.failed"))
        return events

    def close_open_item(self, status: ItemStatus) -> list[ResponseStreamEvent]:
        if self._open == "reasoning":
            return self.end_reasoning()
        if self._open == "message":
            return self.end_message(status)
        if self._open == "function_call":
            return self.end_function_call(status=status)
        return []

    # ---------------------------------------------------------------- reasoning item

    def add_reasoning(self, text: str) -> list[ResponseStreamEvent]:
        events: list[ResponseStreamEvent] = []
        if self._open != "reasoning":
            item = ResponseReasoningItem(
                type="reasoning", id=new_item_id("rs"), summary=[], status="in_progress"
            )
            events.extend(self._open_item(item, "reasoning"))
            events.append(
                ResponseReasoningSummaryPartAddedEvent(
                    type="response.reasoning_summary_part.added",
                    **self._placed(item.id),
                    summary_index=0,
                    part=SummaryPartAdded(type="summary_text", text=""),
                )
            )
        self._open_text += text
        events.append(
            ResponseReasoningSummaryTextDeltaEvent(
                type="response.reasoning_summary_text.delta",
                **self._placed(),
                summary_index=0,
                delta=text,
            )
        )
        return events

    def end_reasoning(self) -> list[ResponseStreamEvent]:
        if self._open != "reasoning":
            return []
        text = self._open_text
        item = ResponseReasoningItem(
            type="reasoning",
            id=self.output[-1].id or "",
            summary=[Summary(type="summary_text", text=text)],
            status="completed",
        )
        self.output[-1] = item
        self._open = None
        return [
            ResponseReasoningSummaryTextDoneEvent(
                type="response.reasoning_summary_text.done",
                **self._placed(item.id),
                summary_index=0,
                text=text,
            ),
            ResponseReasoningSummaryPartDoneEvent(
                type="response.reasoning_summary_part.done",
                **self._placed(item.id),
                summary_index=0,
                part=SummaryPartDone(type="summary_text", text=text),
            ),
            self._item_done(item),
        ]

    # ---------------------------------------------------------------- message item

    def add_text(self, text: str) -> list[ResponseStreamEvent]:
        events: list[ResponseStreamEvent] = []
        if self._open != "message":
            events.extend(self.open_message())
        self._open_text += text
        events.append(
            ResponseTextDeltaEvent(
                type="response.output_text.delta",
                **self._placed(),
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return events

    def open_message(self) -> list[ResponseStreamEvent]:
        item = ResponseOutputMessage(
            type="message", id=new_item_id("msg"), role="assistant", status="in_progress", content=[]
        )
        events = self._open_item(item, "message")
        events.append(
            ResponseContentPartAddedEvent(
                type="response.content_part.added",
                **self._placed(item.id),
                content_index=0,
                part=ResponseOutputText(type="output_text", text="", annotations=[], logprobs=[]),
            )
        )
        return events

    def end_message(self, status: ItemStatus = "completed") -> list[ResponseStreamEvent]:
        if self._open != "message":
            return []
        text = self._open_text
        part = ResponseOutputText(type="output_text", text=text, annotations=[], logprobs=[])
        item = ResponseOutputMessage(
            type="message", id=self.output[-1].id or "", role="assistant", status=status, content=[part]
        )
        self.output[-1] = item
        self._open = None
        return [
            ResponseTextDoneEvent(
                type="response.output_text.done",
                **self._placed(item.id),
                content_index=0,
                text=text,
                logprobs=[],
            ),
            ResponseContentPartDoneEvent(
                type="response.content_part.done",
                **self._placed(item.id),
                content_index=0,
                part=part,
            ),
            self._item_done(item),
        ]

    # ---------------------------------------------------------------- function call item

    def start_function_call(self, name: str, call_id: str | None = None) -> list[ResponseStreamEvent]:
        item = ResponseFunctionToolCall(
            type="function_call",
            id=new_item_id("fc"),
            call_id=call_id or tool_calls.new_call_id(),
            name=name,
            arguments="",
            status="in_progress",
        )
        return self._open_item(item, "function_call")

    def add_arguments(self, delta: str) -> list[ResponseStreamEvent]:
        if self._open != "function_call" or not delta:
            return []
        self._open_text += delta
        return [
            ResponseFunctionCallArgumentsDeltaEvent(
                type="response.function_call_arguments.delta",
                **self._placed(),
                delta=delta,
            )
        ]

    def end_function_call(self, *, status: ItemStatus = "completed") -> list[ResponseStreamEvent]:
        if self._open != "function_call":
            return []
        current = self.output[-1]
        assert isinstance(current, ResponseFunctionToolCall)
        item = current.model_copy(update={"arguments": self._open_text, "status": status})
        self.output[-1] = item
        self._open = None
        return [
            ResponseFunctionCallArgumentsDoneEvent(
                type="response.function_call_arguments.done",
                **self._placed(item.id or ""),
                arguments=item.arguments,
            ),
            self._item_done(item),
        ]

    def function_call(
        self, name: str, arguments: str, call_id: str | None = None
    ) -> list[ResponseStreamEvent]:
        """A whole call at once (the buffered form: its arguments in one delta)."""
        return (
            self.start_function_call(name, call_id) + self.add_arguments(arguments) + self.end_function_call()
        )

    # ---------------------------------------------------------------- shared

    def _open_item(self, item: ResponseItem, kind: OpenKind) -> list[ResponseStreamEvent]:
        """Close the open item, then add ``item`` as the open one (``output_item.added``)."""
        events = self.close_open_item("completed")
        self.output.append(item)
        self._open = kind
        self._open_text = ""
        events.append(self._item_added(item))
        return events

    def _item_added(self, item: Any) -> ResponseOutputItemAddedEvent:
        return ResponseOutputItemAddedEvent(
            type="response.output_item.added",
            sequence_number=self._next(),
            output_index=self._index,
            item=item.model_copy(deep=True),
        )

    def _item_done(self, item: Any) -> ResponseOutputItemDoneEvent:
        return ResponseOutputItemDoneEvent(
            type="response.output_item.done",
            sequence_number=self._next(),
            output_index=self._index,
            item=item.model_copy(deep=True),
        )
