"""What the model produced, as typed output items: the one reading both endpoints render.

An :class:`OutputInterpreter` is fed the engine's text deltas and its
:class:`~language_pipes.engine.types.Finished` event and returns
:data:`OutputItem` values: the reasoning splitter's ``ReasoningDelta``,
``ReasoningEnded`` and ``AnswerDelta``, and the tool-call items defined here.
The chat endpoint renders them as chunk deltas
(:mod:`language_pipes.api.chat_render`), the Responses endpoint as output items
and stream events (:mod:`language_pipes.api.responses_output`). A non-streamed
answer is the same items collected, so the two forms cannot drift apart.

How the output is read depends on what it may be (:data:`OutputMode`):

* ``text``: reasoning and answer text pass through as they are generated;
* ``auto_tools``: reasoning passes through live; the answer is held until the
  end, then becomes :class:`ToolCallsParsed` or one ``AnswerDelta``;
* ``enforced_call``: the constraint guarantees one call, so
  :class:`ToolCallStarted` comes as soon as the tool's name is generated and
  its arguments follow as :class:`ToolCallArguments` while they are produced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from language_pipes.api import tool_calls

# The reasoning splitter's events are output items as they are.
from language_pipes.api.reasoning import (
    AnswerDelta,
    ReasoningDelta,
    ReasoningEnded,
    ReasoningSplitter,
    SplitEvent,
)
from language_pipes.engine.types import Finished, TextDelta

OutputMode = Literal["text", "auto_tools", "enforced_call"]


@dataclass(frozen=True)
class ToolCallStarted:
    """The enforced call's tool is known; its arguments follow."""

    call_id: tool_calls.CallId
    name: str


@dataclass(frozen=True)
class ToolCallArguments:
    """More argument text of the call that started (never empty)."""

    text: str


@dataclass(frozen=True)
class ToolCallEnded:
    """The started call is over; ``complete`` is False when the token limit cut it off."""

    complete: bool


@dataclass(frozen=True)
class WholeToolCall:
    """A call read from a whole (buffered) answer."""

    call_id: tool_calls.CallId
    name: str
    arguments: str


@dataclass(frozen=True)
class ToolCallsParsed:
    """The buffered answer was these calls (at least one)."""

    calls: tuple[WholeToolCall, ...]


@dataclass(frozen=True)
class OutputEnded:
    """The last item: how the generation ended, and whether the output is a tool call."""

    finished: Finished
    called_tool: bool
    reasoning_tokens: int

    @property
    def cut_off(self) -> bool:
        """The token limit ended the output."""
        return self.finished.reason == "length"


OutputItem = (
    ReasoningDelta
    | ReasoningEnded
    | AnswerDelta
    | ToolCallStarted
    | ToolCallArguments
    | ToolCallEnded
    | ToolCallsParsed
    | OutputEnded
)


def output_mode(
    choice: tool_calls.ToolChoice, callable_tools: Sequence[tool_calls.FunctionTool]
) -> OutputMode:
    """What the output may be, given the tool choice and the tools it lets the model call."""
    if tool_calls.call_is_enforced(choice):
        return "enforced_call"
    return "auto_tools" if callable_tools else "text"


@dataclass(frozen=True)
class OutputReading:
    """How one request's output is to be read, decided by its plan before generation."""

    mode: OutputMode
    callable_tools: Sequence[tool_calls.FunctionTool] = ()
    parallel_tool_calls: bool = True
    max_tool_calls: int | None = None
    # The chat template's generation prompt already opened a <think> block.
    starts_in_reasoning: bool = False


class OutputInterpreter:
    """Generated text in, output items out (one interpreter per generation)."""

    def __init__(self, reading: OutputReading) -> None:
        self.reading = reading
        self.splitter = ReasoningSplitter(starts_in_reasoning=reading.starts_in_reasoning)
        self.call_reader = tool_calls.EnforcedCallReader()
        self.buffered_answer = ""
        self.raw_text = ""
        self.reasoning_tokens = 0

    def feed(self, delta: TextDelta) -> list[OutputItem]:
        self.raw_text += delta.text
        if self.reading.mode == "enforced_call":
            return self._enforced(delta.text)
        if self.splitter.in_reasoning:
            self.reasoning_tokens += len(delta.token_ids)
        return self._split(self.splitter.feed(delta.text))

    def finish(self, finished: Finished) -> list[OutputItem]:
        """The last items, ending with :class:`OutputEnded` (``finished`` is not an error)."""
        if self.reading.mode == "enforced_call":
            items, called = self._enforced_finish()
        else:
            items = self._split(self.splitter.finish())
            called = False
            if self.reading.mode == "auto_tools":
                called = self._resolve_buffered_answer(items)
        items.append(OutputEnded(finished, called_tool=called, reasoning_tokens=self.reasoning_tokens))
        return items

    def _split(self, events: list[SplitEvent]) -> list[OutputItem]:
        if self.reading.mode != "auto_tools":
            return list(events)
        # The answer may turn out to be a call: it is held back, reasoning is not.
        self.buffered_answer += "".join(event.text for event in events if isinstance(event, AnswerDelta))
        return [event for event in events if not isinstance(event, AnswerDelta)]

    def _resolve_buffered_answer(self, items: list[OutputItem]) -> bool:
        reading = self.reading
        calls = tool_calls.parse_tool_calls(
            self.buffered_answer, reading.callable_tools, parallel=reading.parallel_tool_calls
        )
        if reading.max_tool_calls is not None:
            calls = calls[: reading.max_tool_calls]
        if calls:
            whole = (WholeToolCall(tool_calls.new_call_id(), call.name, call.arguments) for call in calls)
            items.append(ToolCallsParsed(tuple(whole)))
            return True
        if self.buffered_answer:
            items.append(AnswerDelta(self.buffered_answer))
        return False

    def _enforced(self, text: str) -> list[OutputItem]:
        had_name = self.call_reader.name is not None
        arguments = self.call_reader.feed(text)
        items: list[OutputItem] = []
        if not had_name and self.call_reader.name is not None:
            items.append(ToolCallStarted(tool_calls.new_call_id(), self.call_reader.name))
        if arguments and self.call_reader.name is not None:
            items.append(ToolCallArguments(arguments))
        return items

    def _enforced_finish(self) -> tuple[list[OutputItem], bool]:
        if self.call_reader.name is None:
            # Cut off before the tool's name was complete: nothing callable, report the raw text.
            return ([AnswerDelta(self.raw_text)] if self.raw_text else []), False
        # The grammar closed the call exactly when the whole text parses as one.
        complete = tool_calls.parse_enforced_call(self.raw_text) is not None
        items: list[OutputItem] = []
        if rest := self.call_reader.finish(complete=complete):
            items.append(ToolCallArguments(rest))
        items.append(ToolCallEnded(complete))
        return items, complete
