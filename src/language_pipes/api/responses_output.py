"""Model output -> Responses output items: the :class:`OutputComposer` (used by ``api.responses``)."""

from __future__ import annotations

from typing import Literal

from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseStreamEvent

from language_pipes.api import tool_calls
from language_pipes.api.errors import finished_with_error
from language_pipes.api.reasoning import AnswerDelta, ReasoningDelta, ReasoningEnded, ReasoningSplitter
from language_pipes.api.responses_plan import ResponsePlan
from language_pipes.api.responses_stream import ResponseBuilder
from language_pipes.engine.types import Finished, TextDelta


class OutputComposer:
    """Turns the engine's text deltas into output items and stream events (modes: ``api.responses`` doc)."""

    def __init__(self, builder: ResponseBuilder, plan: ResponsePlan) -> None:
        self.builder = builder
        self.mode = plan.mode
        self.tools = tool_calls.tools_for_choice(plan.tools, plan.tool_choice)
        self.parallel = plan.body.parallel_tool_calls is not False
        self.max_tool_calls = plan.body.max_tool_calls
        self.splitter = ReasoningSplitter(starts_in_reasoning=plan.starts_in_reasoning)
        self.call_reader = tool_calls.EnforcedCallReader()
        self.buffered_answer = ""
        self.raw_text = ""
        self.reasoning_tokens = 0

    def on_delta(self, delta: TextDelta) -> list[ResponseStreamEvent]:
        self.raw_text += delta.text
        if self.mode == "enforced_call":
            return self._enforced_delta(delta.text)
        if self.splitter.in_reasoning:
            self.reasoning_tokens += len(delta.token_ids)
        return self._split_events(self.splitter.feed(delta.text))

    def on_finished(self, finished: Finished) -> list[ResponseStreamEvent]:
        if finished.reason == "error":
            # The public message names the request id; the engine's text goes to the log.
            return self.builder.fail(finished_with_error(finished).message)
        status: Literal["completed", "incomplete"] = (
            "incomplete" if finished.reason == "length" else "completed"
        )
        if self.mode == "enforced_call":
            events = self._enforced_finish(status)
        else:
            events = self._split_events(self.splitter.finish())
            if self.mode == "auto_tools":
                events.extend(self._resolve_buffered_answer())
            if not any(
                isinstance(item, ResponseOutputMessage | ResponseFunctionToolCall)
                for item in self.builder.output
            ):
                events.extend(self.builder.open_message())  # an empty answer is still a message
        events.extend(
            self.builder.finish(
                status,
                input_tokens=finished.prompt_tokens,
                output_tokens=finished.completion_tokens,
                reasoning_tokens=self.reasoning_tokens,
            )
        )
        return events

    def _split_events(
        self, split_events: list[AnswerDelta | ReasoningDelta | ReasoningEnded]
    ) -> list[ResponseStreamEvent]:
        events: list[ResponseStreamEvent] = []
        for event in split_events:
            if isinstance(event, ReasoningDelta):
                events.extend(self.builder.add_reasoning(event.text))
            elif isinstance(event, ReasoningEnded):
                events.extend(self.builder.end_reasoning())
            elif self.mode == "auto_tools":
                self.buffered_answer += event.text
            else:
                events.extend(self.builder.add_text(event.text))
        return events

    def _resolve_buffered_answer(self) -> list[ResponseStreamEvent]:
        calls = tool_calls.parse_tool_calls(self.buffered_answer, self.tools, parallel=self.parallel)
        if self.max_tool_calls is not None:
            calls = calls[: self.max_tool_calls]
        events: list[ResponseStreamEvent] = []
        if calls:
            for call in calls:
                events.extend(self.builder.function_call(call.name, call.arguments))
        elif self.buffered_answer:
            events.extend(self.builder.add_text(self.buffered_answer))
        return events

    def _enforced_delta(self, text: str) -> list[ResponseStreamEvent]:
        had_name = self.call_reader.name is not None
        arguments = self.call_reader.feed(text)
        events: list[ResponseStreamEvent] = []
        if not had_name and self.call_reader.name is not None:
            events.extend(self.builder.start_function_call(self.call_reader.name))
        events.extend(self.builder.add_arguments(arguments))
        return events

    def _enforced_finish(self, status: Literal["completed", "incomplete"]) -> list[ResponseStreamEvent]:
        # The grammar closed the call exactly when the whole text parses as one.
        complete = tool_calls.parse_enforced_call(self.raw_text) is not None
        if self.call_reader.name is None:
            # Cut off before the tool's name was complete: nothing callable, report the raw text.
            return self.builder.add_text(self.raw_text) if self.raw_text else []
        events = self.builder.add_arguments(self.call_reader.finish(complete=complete))
        events.extend(self.builder.end_function_call(status="completed" if complete else "incomplete"))
        return events
