"""The <think> splitter: whole texts, and streams split at every position (real tokenizer too)."""

from __future__ import annotations

import pytest

from language_pipes.api.reasoning import (
    AnswerDelta,
    ReasoningDelta,
    ReasoningEnded,
    ReasoningSplitter,
    SplitEvent,
    prompt_opens_reasoning,
    split_reasoning,
)

SAMPLES = [
    "<think>\nThe user wants 2+2. That is 4.\n</think>\n\nThe answer is 4.",
    "  <think>short</think>Answer",
    "<think>\n\n</think>\n\nNo reasoning here.",
    "Plain answer with a <think> tag later</think> inside.",
    "<think>unterminated reasoning that runs out",
    "<thi",
    "",
    "   \n",
    "<think>a < b and c </thin> d </think>  x </think> y",
]


def run_stream(pieces: list[str], *, starts_in_reasoning: bool = False) -> list[SplitEvent]:
    splitter = ReasoningSplitter(starts_in_reasoning=starts_in_reasoning)
    events: list[SplitEvent] = []
    for piece in pieces:
        events.extend(splitter.feed(piece))
    events.extend(splitter.finish())
    return events


def joined(events: list[SplitEvent]) -> tuple[str, str, int]:
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    answer = "".join(e.text for e in events if isinstance(e, AnswerDelta))
    return reasoning, answer, sum(isinstance(e, ReasoningEnded) for e in events)


def assert_well_ordered(events: list[SplitEvent]) -> None:
    """Reasoning only before the end marker, answer only after it, nothing empty, no tags."""
    ended = False
    for event in events:
        if isinstance(event, ReasoningEnded):
            assert not ended
            ended = True
        elif isinstance(event, ReasoningDelta):
            assert not ended and event.text
            assert "<think>" not in event.text and "</think>" not in event.text
        else:
            assert event.text
            if any(isinstance(e, ReasoningDelta) for e in events):
                assert ended


def test_whole_text_split() -> None:
    assert split_reasoning(SAMPLES[0]).reasoning == "The user wants 2+2. That is 4."
    assert split_reasoning(SAMPLES[0]).answer == "The answer is 4."
    assert split_reasoning(SAMPLES[1]).reasoning == "short"
    assert split_reasoning(SAMPLES[1]).answer == "Answer"
    empty = split_reasoning(SAMPLES[2])
    assert empty.reasoning is None and empty.answer == "No reasoning here."
    # Only a LEADING block counts; the rest is answer, unchanged.
    assert split_reasoning(SAMPLES[3]).reasoning is None
    assert split_reasoning(SAMPLES[3]).answer == SAMPLES[3]
    cut = split_reasoning(SAMPLES[4])
    assert cut.reasoning == "unterminated reasoning that runs out" and cut.answer == ""
    assert split_reasoning("<thi").answer == "<thi"
    assert split_reasoning("   \n").answer == "   \n"
    tricky = split_reasoning(SAMPLES[8])
    assert tricky.reasoning == "a < b and c </thin> d"
    assert tricky.answer == "x </think> y"


def test_template_opened_block() -> None:
    result = split_reasoning("I should greet.\n</think>\n\nHello!", starts_in_reasoning=True)
    assert result.reasoning == "I should greet." and result.answer == "Hello!"
    assert prompt_opens_reasoning("<|im_start|>assistant\n<think>\n")
    assert not prompt_opens_reasoning("<|im_start|>assistant\n<think>\n\n</think>\n\n")


@pytest.mark.parametrize("text", SAMPLES)
def test_every_two_way_and_three_way_split_matches_whole(text: str) -> None:
    expected = split_reasoning(text)
    for first in range(len(text) + 1):
        for second in range(first, len(text) + 1):
            events = run_stream([text[:first], text[first:second], text[second:]])
            assert_well_ordered(events)
            reasoning, answer, ends = joined(events)
            assert (reasoning or None, answer) == (expected.reasoning, expected.answer), (first, second)
            assert ends == (1 if text.lstrip().startswith("<think>") else 0)


def test_one_character_at_a_time_holds_back_at_most_a_tag() -> None:
    text = SAMPLES[0]
    splitter = ReasoningSplitter()
    emitted = ""
    for index, char in enumerate(text):
        for event in splitter.feed(char):
            if isinstance(event, ReasoningDelta):
                emitted += event.text
        seen = text[: index + 1]
        if seen.startswith("<think>\nThe") and "</think>" not in seen:
            # Everything except a possible partial tag and trailing whitespace is out already.
            body = seen[len("<think>\n") :]
            assert body.startswith(emitted)
            held_back = body[len(emitted) :].lstrip()
            assert len(held_back) < len("</think>") and "</think>".startswith(held_back)


@pytest.fixture(scope="module")
def tokenizer(default_tokenizer):  # type: ignore[no-untyped-def]
    return default_tokenizer


def token_pieces(tokenizer, text: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Text deltas as an incremental detokenizer would produce them, one per token."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    pieces: list[str] = []
    previous = ""
    for end in range(1, len(ids) + 1):
        current = tokenizer.decode(ids[:end])
        pieces.append(current[len(previous) :])
        previous = current
    assert "".join(pieces) == text
    return pieces


@pytest.mark.parametrize("text", SAMPLES[:5] + [SAMPLES[8]])
def test_real_token_stream(tokenizer, text: str) -> None:  # type: ignore[no-untyped-def]
    pieces = token_pieces(tokenizer, text)
    expected = split_reasoning(text)
    events = run_stream(pieces)
    assert_well_ordered(events)
    reasoning, answer, _ = joined(events)
    assert (reasoning or None, answer) == (expected.reasoning, expected.answer)
    # Re-split every token delta at every inner position: a tag split anywhere never leaks.
    for index, piece in enumerate(pieces):
        for cut in range(1, len(piece)):
            split_pieces = pieces[:index] + [piece[:cut], piece[cut:]] + pieces[index + 1 :]
            events = run_stream(split_pieces)
            assert_well_ordered(events)
            assert joined(events)[:2] == (expected.reasoning or "", expected.answer)
