"""Incremental detokenization with the real tokenizer, and stop strings split across pushes."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from language_pipes.engine.detokenize import IncrementalDetokenizer, StopMatcher
from support.tiny_models import default_model_folder

REPLACEMENT = "\ufffd"
TEXTS = [
    "Héllo wörld 🎉🚀 日本語のテキスト",
    "  leading spaces\n\nnew lines\tand tabs  ",
    "naïve café — “quotes” 👨‍👩‍👧 ok",
    "Ελληνικά, русский, العربية, 한국어 and 中文。",
    "\n starts with a newline, ends with a space ",
    "emoji run 😀😃😄😁😆😅🤣😂🙂🙃 done",
]


@pytest.fixture(scope="module")
def tokenizer(model_store_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(default_model_folder(model_store_dir))


def stream(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> list[str]:
    detokenizer = IncrementalDetokenizer(tokenizer)
    return [detokenizer.push(token_id) for token_id in ids]


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_concatenate_to_the_full_decode(tokenizer: PreTrainedTokenizerBase, text: str) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    deltas = stream(tokenizer, ids)
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True) == text
    assert not any(REPLACEMENT in delta for delta in deltas)


def test_multibyte_characters_really_span_several_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    """Decoding token by token would print U+FFFD here, so the hold-back path above is exercised."""
    ids = tokenizer.encode("🎉 日本語", add_special_tokens=False)
    assert any(REPLACEMENT in tokenizer.decode([token_id]) for token_id in ids)
    deltas = stream(tokenizer, ids)
    assert "" in deltas  # a token that ends mid-character releases nothing yet
    assert "".join(deltas) == "🎉 日本語"


def test_leading_spaces_are_kept_on_every_piece(tokenizer: PreTrainedTokenizerBase) -> None:
    ids = tokenizer.encode(" one two  three", add_special_tokens=False)
    deltas = stream(tokenizer, ids)
    assert deltas[0].startswith(" ")
    assert "".join(deltas) == " one two  three"


def test_special_tokens_are_skipped(tokenizer: PreTrainedTokenizerBase) -> None:
    ids = (
        tokenizer.encode("Hi there", add_special_tokens=False)
        + [tokenizer.eos_token_id]
        + tokenizer.encode(" again ✓", add_special_tokens=False)
    )
    deltas = stream(tokenizer, ids)
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True) == "Hi there again ✓"


def test_chat_answer_round_trips(tokenizer: PreTrainedTokenizerBase) -> None:
    answer = "Sure! Here's a list:\n\n1. Café ☕\n2. Naïve résumé\n\n```python\nprint('hi')\n```"
    ids = tokenizer.encode(answer, add_special_tokens=False)
    assert "".join(stream(tokenizer, ids)) == answer


def test_each_push_decodes_a_short_window_however_long_the_output(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    """Decoding the whole output on every token would cost O(n) per token, O(n²) per answer."""
    text = " ".join(TEXTS) * 8
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > 600
    longest: list[int] = []
    original_decode = tokenizer.decode

    def measuring_decode(token_ids: list[int], **options: object) -> str:
        longest.append(len(token_ids))
        return original_decode(token_ids, **options)

    tokenizer.decode = measuring_decode  # type: ignore[method-assign]
    try:
        deltas = stream(tokenizer, ids)
    finally:
        del tokenizer.decode
    assert "".join(deltas) == text
    assert max(longest) <= 8  # a few ids of context plus a character split over tokens


# -- stop strings ---------------------------------------------------------------------------


def push_all(matcher: StopMatcher, pieces: list[str]) -> tuple[list[str], bool]:
    emitted: list[str] = []
    for piece in pieces:
        text, stopped = matcher.push(piece)
        emitted.append(text)
        if stopped:
            return emitted, True
    emitted.append(matcher.flush())
    return emitted, False


def test_stop_string_split_across_pushes_is_found_and_not_emitted() -> None:
    emitted, stopped = push_all(StopMatcher(("END",)), ["The answer is 4", "2. E", "N", "D and more"])
    assert stopped
    assert "".join(emitted) == "The answer is 42. "
    assert emitted[1] == "2. "  # "E" is held back: it may start the stop string


def test_held_back_prefix_is_released_when_it_is_not_a_stop() -> None:
    matcher = StopMatcher(("END",))
    assert matcher.push("say E") == ("say ", False)
    assert matcher.push("N") == ("", False)
    assert matcher.push("TER") == ("ENTER", False)
    emitted, stopped = push_all(matcher, [" the E", "Nd"])
    assert not stopped
    assert "".join(emitted) == " the ENd"


def test_partial_stop_at_the_end_is_flushed() -> None:
    emitted, stopped = push_all(StopMatcher(("</answer>",)), ["done </ans"])
    assert not stopped
    assert emitted == ["done ", "</ans"]


def test_first_match_wins_among_several_stops() -> None:
    emitted, stopped = push_all(StopMatcher(("world", "lo w", "xyz")), ["hel", "lo wor", "ld"])
    assert stopped
    assert "".join(emitted) == "hel"  # "lo w" begins before "world"

    emitted, stopped = push_all(StopMatcher(("\n\n", "User:")), ["Answer.\nUser", ": hi\n\n"])
    assert stopped
    assert "".join(emitted) == "Answer.\n"


def test_stop_at_the_very_start_emits_nothing() -> None:
    emitted, stopped = push_all(StopMatcher(("###",)), ["###", "rest"])
    assert stopped
    assert "".join(emitted) == ""


def test_no_stops_passes_everything_through() -> None:
    matcher = StopMatcher(("",))
    assert matcher.push("anything E") == ("anything E", False)
    assert matcher.flush() == ""


def test_stop_matching_on_real_token_stream(tokenizer: PreTrainedTokenizerBase) -> None:
    """Detokenizer then stop matcher, the way a sequence chains them."""
    ids = tokenizer.encode("Step one. 🎉 Observation: done. More text.", add_special_tokens=False)
    detokenizer, matcher = IncrementalDetokenizer(tokenizer), StopMatcher(("Observation:",))
    out = ""
    stopped = False
    for token_id in ids:
        text, stopped = matcher.push(detokenizer.push(token_id))
        out += text
        if stopped:
            break
    assert stopped
    assert out == "Step one. 🎉 "
