"""Chat messages -> prompt token ids, safely: bounded, off the event loop, user text kept as text.

:func:`encode_prompt` is what every generating endpoint calls once it holds its
job slot:

1. the messages' text is counted against ``max_prompt_chars`` (400 naming the
   parameter) before anything expensive happens;
2. the chat template is rendered and tokenized in a worker thread, so a long
   prompt never stalls the event loop (which also serves streams and the node);
3. a control token's text inside a message (a user typing ``<|im_start|>``)
   is tokenized as plain text, never as the control token: such strings are
   swapped for markers before the template renders, and each marker is then
   tokenized with special-token matching off (:func:`encode_chat_as_text`).
   Prompts without such strings take the generator's own ``encode_chat``.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import threading
from collections.abc import Sequence
from typing import Any

from jinja2.exceptions import TemplateError

from language_pipes.api.errors import invalid_request
from language_pipes.engine.types import TextGenerator

_control_strings: dict[int, tuple[Any, tuple[str, ...]]] = {}
_control_strings_lock = threading.Lock()


def control_token_strings(tokenizer: Any) -> tuple[str, ...]:
    """The text of every special added token of ``tokenizer`` (longest first), cached per tokenizer."""
    with _control_strings_lock:
        cached = _control_strings.get(id(tokenizer))
        if cached is not None and cached[0] is tokenizer:
            return cached[1]
    decoder = getattr(tokenizer, "added_tokens_decoder", None)
    strings: set[str] = set()
    if isinstance(decoder, dict):
        strings = {token.content for token in decoder.values() if getattr(token, "special", False)}
    strings.update(str(token) for token in getattr(tokenizer, "all_special_tokens", ()) or ())
    ordered = tuple(sorted((text for text in strings if text), key=len, reverse=True))
    with _control_strings_lock:
        # Keeping the tokenizer referenced makes id() reuse impossible; there are only a few.
        _control_strings[id(tokenizer)] = (tokenizer, ordered)
    return ordered


def prompt_characters(messages: Sequence[dict[str, object]]) -> int:
    return sum(len(value) for message in messages for value in message.values() if isinstance(value, str))


def _encode_plain(tokenizer: Any, text: str, control_ids: set[int]) -> list[int]:
    """``text`` tokenized with no special-token matching; per character if the tokenizer ignores that."""
    ids = list(tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True))
    if control_ids.intersection(ids):
        ids = [token for character in text for token in tokenizer.encode(character, add_special_tokens=False)]
    return ids


def encode_chat_as_text(generator: TextGenerator, messages: list[dict[str, object]]) -> list[int]:
    """Like ``generator.encode_chat``, but control-token text in a message stays plain text."""
    tokenizer = generator.tokenizer
    controls = control_token_strings(tokenizer)
    contents = [message.get("content") for message in messages]
    if not controls or not any(
        isinstance(content, str) and control in content for content in contents for control in controls
    ):
        return generator.encode_chat(messages)
    render = getattr(tokenizer, "apply_chat_template", None)
    if render is None:
        return generator.encode_chat(messages)
    nonce = secrets.token_hex(8)
    hidden: list[str] = []
    pattern = re.compile("|".join(re.escape(control) for control in controls))

    def hide(match: re.Match[str]) -> str:
        hidden.append(match.group(0))
        return f"\ue000{nonce}:{len(hidden) - 1}\ue001"

    masked = [
        {**message, "content": pattern.sub(hide, content)} if isinstance(content, str) else message
        for message, content in zip(messages, contents, strict=True)
    ]
    rendered: str = render(masked, add_generation_prompt=True, tokenize=False)
    control_ids = {int(tokenizer.convert_tokens_to_ids(control)) for control in controls}
    ids: list[int] = []
    position = 0
    for marker in re.finditer(f"\ue000{nonce}:(\\d+)\ue001", rendered):
        ids.extend(tokenizer.encode(rendered[position : marker.start()], add_special_tokens=False))
        ids.extend(_encode_plain(tokenizer, hidden[int(marker.group(1))], control_ids))
        position = marker.end()
    ids.extend(tokenizer.encode(rendered[position:], add_special_tokens=False))
    return ids


async def encode_prompt(
    generator: TextGenerator,
    messages: list[dict[str, object]],
    *,
    max_chars: int,
    param: str,
) -> list[int]:
    """Token ids of the conversation (see the module doc); 400s name ``param``."""
    characters = prompt_characters(messages)
    if characters > max_chars:
        raise invalid_request(
            f"The prompt has {characters} characters; this server accepts at most {max_chars}.",
            param=param,
            code="prompt_too_large",
        )
    try:
        return await asyncio.to_thread(encode_chat_as_text, generator, messages)
    except TemplateError as error:
        # The model's chat template refused this conversation (e.g. a role order it does not accept).
        raise invalid_request(f"The model's chat template rejected the {param}: {error}", param) from None
