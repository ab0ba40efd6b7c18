"""Split a leading ``<think>…</think>`` block (Qwen3 and similar models) off the answer.

:class:`ReasoningSplitter` works on a stream of text deltas: it reports reasoning
text as soon as it is certain it is not part of a tag (holding back at most
``len("</think>") - 1`` characters plus trailing whitespace), then the answer.
:func:`split_reasoning` runs the same splitter over a whole text, so the
streamed pieces always concatenate to exactly the non-streamed result.

The tags are stripped, so is whitespace around the reasoning and the
whitespace between ``</think>`` and the answer. Output that does not begin
with ``<think>`` (after optional whitespace) is all answer, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

SplitterPhase = Literal["undecided", "reasoning", "before_answer", "answer"]


@dataclass(frozen=True)
class ReasoningDelta:
    """More reasoning text (tags and surrounding whitespace removed)."""

    text: str


@dataclass(frozen=True)
class ReasoningEnded:
    """The reasoning block closed (or the output ended inside it)."""


@dataclass(frozen=True)
class AnswerDelta:
    """More answer text."""

    text: str


SplitEvent = ReasoningDelta | ReasoningEnded | AnswerDelta


@dataclass(frozen=True)
class SplitText:
    """A whole output split in two; ``reasoning`` is None when there was none (or it was empty)."""

    reasoning: str | None
    answer: str


def _tag_prefix_length(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for length in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-length:]):
            return length
    return 0


class ReasoningSplitter:
    """Incremental splitter: :meth:`feed` each delta, then :meth:`finish` once.

    ``starts_in_reasoning`` is for chat templates whose generation prompt
    already opened the block (the output then holds only ``…</think>``).
    """

    def __init__(self, *, starts_in_reasoning: bool = False) -> None:
        self._phase: SplitterPhase = "reasoning" if starts_in_reasoning else "undecided"
        self._buffer = ""
        self._pending_whitespace = ""
        self._reasoning_started = False

    @property
    def in_reasoning(self) -> bool:
        return self._phase == "reasoning"

    def feed(self, delta: str) -> list[SplitEvent]:
        self._buffer += delta
        return self._drain()

    def finish(self) -> list[SplitEvent]:
        """Flush what was held back; the output is over."""
        events = self._drain()
        rest, self._buffer = self._buffer, ""
        if self._phase == "undecided" and rest:
            # It never became "<think>": a short answer that looked like the start of the tag.
            events.append(AnswerDelta(rest))
        elif self._phase == "reasoning":
            # Cut off inside the block: what was held back as a possible tag was reasoning.
            events.extend(self._reasoning_text(rest, final=True))
            events.append(ReasoningEnded())
        self._phase = "answer"
        return events

    def _drain(self) -> list[SplitEvent]:
        events: list[SplitEvent] = []
        while True:
            if self._phase == "undecided" and not self._decide_opening(events):
                return events
            if self._phase == "reasoning" and not self._consume_reasoning(events):
                return events
            if self._phase == "before_answer":
                stripped = self._buffer.lstrip()
                if not stripped:
                    self._buffer = ""
                    return events
                self._buffer = stripped
                self._phase = "answer"
            if self._phase == "answer":
                if self._buffer:
                    events.append(AnswerDelta(self._buffer))
                    self._buffer = ""
                return events

    def _decide_opening(self, events: list[SplitEvent]) -> bool:
        """Returns False while the buffer could still become ``<think>``."""
        stripped = self._buffer.lstrip()
        if stripped.startswith(THINK_OPEN):
            self._phase = "reasoning"
            self._buffer = stripped[len(THINK_OPEN) :]
            return True
        if not stripped or THINK_OPEN.startswith(stripped):
            return False
        self._phase = "answer"
        return True

    def _consume_reasoning(self, events: list[SplitEvent]) -> bool:
        """Returns True when the block closed and the answer phase begins."""
        close_at = self._buffer.find(THINK_CLOSE)
        if close_at >= 0:
            events.extend(self._reasoning_text(self._buffer[:close_at], final=True))
            events.append(ReasoningEnded())
            self._buffer = self._buffer[close_at + len(THINK_CLOSE) :]
            self._phase = "before_answer"
            return True
        held = _tag_prefix_length(self._buffer, THINK_CLOSE)
        certain = self._buffer[: len(self._buffer) - held]
        self._buffer = self._buffer[len(certain) :]
        events.extend(self._reasoning_text(certain, final=False))
        return False

    def _reasoning_text(self, text: str, *, final: bool) -> list[SplitEvent]:
        """Reasoning text without leading/trailing whitespace of the whole block."""
        if not self._reasoning_started:
            text = text.lstrip()
            if not text:
                return []
            self._reasoning_started = True
        text = self._pending_whitespace + text
        body = text.rstrip()
        self._pending_whitespace = "" if final else text[len(body) :]
        return [ReasoningDelta(body)] if body else []


def split_reasoning(text: str, *, starts_in_reasoning: bool = False) -> SplitText:
    """Split a complete output; the same result the streaming splitter gives piece by piece."""
    splitter = ReasoningSplitter(starts_in_reasoning=starts_in_reasoning)
    events = splitter.feed(text) + splitter.finish()
    reasoning = "".join(event.text for event in events if isinstance(event, ReasoningDelta))
    answer = "".join(event.text for event in events if isinstance(event, AnswerDelta))
    return SplitText(reasoning=reasoning or None, answer=answer)


def prompt_opens_reasoning(prompt_text: str) -> bool:
    """Whether a rendered prompt ends inside an open ``<think>`` block (the template opened it)."""
    stripped = prompt_text.rstrip()
    return stripped.endswith(THINK_OPEN)
