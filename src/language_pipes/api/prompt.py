"""Chat messages -> prompt token ids, safely: bounded, off the event loop, user text kept as text.

:func:`encode_prompt` is what every generating endpoint calls once it holds its
job slot:

1. the messages' text is counted against ``max_prompt_chars`` (400 naming the
   parameter) before anything expensive happens;
2. the chat template is rendered and tokenized in a worker thread, so a long
   prompt never stalls the event loop (which also serves streams and the node);
3. a control token's text inside a message (a user typing ``<|im_start|>``)
   is tokenized as plain text, never as the control token
   (:func:`encode_chat_as_text`): through transformers' own
   ``apply_chat_template(..., sanitize_control_tokens=True)`` where it has it,
   else :func:`encode_with_markers` (such strings become markers before the
   template renders, and each is then encoded as text). Prompts without such
   strings take the generator's own ``encode_chat``, unchanged.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import secrets
import threading
from collections.abc import Sequence
from typing import Any

from jinja2.exceptions import TemplateError

from language_pipes.api import reasoning
from language_pipes.api.errors import invalid_request
from language_pipes.engine.types import TextGenerator

_control_strings: dict[int, tuple[Any, tuple[str, ...]]] = {}
_control_strings_lock = threading.Lock()


def control_token_strings(tokenizer: Any) -> tuple[str, ...]:
    """Text of the tokenizer's control tokens (longest first), cached per tokenizer.

    Control tokens are the special added tokens plus the added tokens the chat
    template writes (``<think>`` in some templates), as transformers counts them.
    """
    with _control_strings_lock:
        cached = _control_strings.get(id(tokenizer))
        if cached is not None and cached[0] is tokenizer:
            return cached[1]
    decoder = getattr(tokenizer, "added_tokens_decoder", None)
    template = getattr(tokenizer, "chat_template", None)
    template_text = template if isinstance(template, str) else ""
    strings: set[str] = set()
    if isinstance(decoder, dict):
        for token in decoder.values():
            content = getattr(token, "content", "")
            in_template = content in template_text and not content.isspace()
            if getattr(token, "special", False) or in_template:
                strings.add(content)
    strings.update(str(token) for token in getattr(tokenizer, "all_special_tokens", ()) or ())
    ordered = tuple(sorted((text for text in strings if text), key=len, reverse=True))
    with _control_strings_lock:
        # Keeping the tokenizer referenced makes id() reuse impossible; there are only a few.
        _control_strings[id(tokenizer)] = (tokenizer, ordered)
    return ordered


def prompt_characters(messages: Sequence[dict[str, object]]) -> int:
    return sum(len(value) for message in messages for value in message.values() if isinstance(value, str))


def _mentions_control_text(messages: Sequence[dict[str, object]], controls: Sequence[str]) -> bool:
    texts = [value for message in messages for value in message.values() if isinstance(value, str)]
    return any(control in text for text in texts for control in controls)


def _sanitizes_itself(render: Any) -> bool:
    """Whether ``apply_chat_template`` takes ``sanitize_control_tokens`` (transformers 5.x, recent)."""
    try:
        return "sanitize_control_tokens" in inspect.signature(render).parameters
    except (TypeError, ValueError):
        # Not introspectable (a C function or an odd wrapper): use our own marker path.
        return False


def encode_chat_as_text(generator: TextGenerator, messages: list[dict[str, object]]) -> list[int]:
    """Like ``generator.encode_chat``, but control-token text in a message stays plain text."""
    tokenizer = generator.tokenizer
    controls = control_token_strings(tokenizer)
    render = getattr(tokenizer, "apply_chat_template", None)
    if not controls or render is None or not _mentions_control_text(messages, controls):
        return generator.encode_chat(messages)
    if _sanitizes_itself(render):
        try:
            ids = render(
                messages,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
                sanitize_control_tokens=True,
            )
            return [int(token) for token in ids]
        except ValueError:
            # transformers could not encode some control text as plain text; the marker path can.
            pass
    return encode_with_markers(tokenizer, messages, controls)


def encode_with_markers(
    tokenizer: Any, messages: list[dict[str, object]], controls: Sequence[str]
) -> list[int]:
    """Our own sanitizing: control text in messages becomes markers, rendered, then encoded as text.

    Only ``encode`` with its defaults is used (never ``split_special_tokens``, which
    flips a flag shared by every thread using the tokenizer).
    """
    nonce = secrets.token_hex(8)
    hidden: list[str] = []
    pattern = re.compile("|".join(re.escape(control) for control in controls))

    def hide(match: re.Match[str]) -> str:
        hidden.append(match.group(0))
        return f"\ue000{nonce}:{len(hidden) - 1}\ue001"

    masked = [
        {
            key: pattern.sub(hide, value) if isinstance(value, str) and key != "role" else value
            for key, value in message.items()
        }
        for message in messages
    ]
    rendered: str = tokenizer.apply_chat_template(masked, add_generation_prompt=True, tokenize=False)
    control_ids = {int(tokenizer.convert_tokens_to_ids(control)) for control in controls}
    ids: list[int] = []
    position = 0
    for marker in re.finditer(f"\ue000{nonce}:(\\d+)\ue001", rendered):
        ids.extend(tokenizer.encode(rendered[position : marker.start()], add_special_tokens=False))
        ids.extend(_encode_plain(tokenizer, hidden[int(marker.group(1))], control_ids))
        position = marker.end()
    ids.extend(tokenizer.encode(rendered[position:], add_special_tokens=False))
    return ids


def _encode_plain(tokenizer: Any, text: str, control_ids: set[int]) -> list[int]:
    """``text`` as plain-text tokens: its first character split off until no control token is read.

    Control tokens start with punctuation (``<|``, ``<``), which pre-tokenizers split off
    anyway, so this mostly gives the tokens the text would have without added tokens.
    """
    ids = [int(token) for token in tokenizer.encode(text, add_special_tokens=False)]
    if len(text) < 2 or not control_ids.intersection(ids):
        return ids
    return _encode_plain(tokenizer, text[:1], control_ids) + _encode_plain(tokenizer, text[1:], control_ids)


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


def prompt_opens_reasoning(generator: TextGenerator, prompt: Sequence[int]) -> bool:
    """Whether the chat template's generation prompt already opened a ``<think>`` block."""
    decode = getattr(generator.tokenizer, "decode", None)
    return decode is not None and reasoning.prompt_opens_reasoning(decode(list(prompt[-8:])))
