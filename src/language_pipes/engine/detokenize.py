"""Incremental detokenization and stop strings.

Streamed pieces must concatenate to exactly the final text: no split UTF-8
characters, no lost spaces. The detokenizer decodes the generated ids and
releases only text that is final (not ending in a partial character); the stop
matcher holds back any tail that could still become a stop string.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Yields the new, final text after each generated token.

    Each push decodes a short window, not the whole output: the ids not yet
    released plus the ids released last, as context for how the new ones join
    (a leading space, a character split over tokens). The cost per token stays
    flat however long the output grows.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._context_start = 0  # the window starts here
        self._released_end = 0  # ids before this one are released as text

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        context = self._decode(self._ids[self._context_start : self._released_end])
        window = self._decode(self._ids[self._context_start :])
        if window.endswith(_REPLACEMENT) or not window.startswith(context):
            return ""  # an incomplete multi-byte character: wait for the next token
        self._context_start, self._released_end = self._released_end, len(self._ids)
        return window[len(context) :]

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        return self._tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


class StopMatcher:
    """Finds the first stop string in the released text, holding back possible partial matches."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(stop for stop in stops if stop)
        self._pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit now, whether a stop string was reached)."""
        if not self._stops:
            return text, False
        self._pending += text
        cut = min((i for i in (self._pending.find(stop) for stop in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            emit, self._pending = self._pending[:cut], ""
            return emit, True
        hold = max((_partial_suffix(self._pending, stop) for stop in self._stops), default=0)
        emit = self._pending[: len(self._pending) - hold]
        self._pending = self._pending[len(emit) :]
        return emit, False

    def flush(self) -> str:
        rest, self._pending = self._pending, ""
        return rest


def _partial_suffix(text: str, stop: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``stop``."""
    for length in range(min(len(text), len(stop) - 1), 0, -1):
        if stop.startswith(text[-length:]):
            return length
    return 0
