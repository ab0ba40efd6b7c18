"""A scripted engine with the real default tokenizer, for API tests that need real tokens or grammars.

:class:`TokenizedGenerator` answers like :class:`ScriptedGenerator` but encodes
chats exactly as the end model does (chat template, then ``encode`` with
special-token matching), and carries the tokenizer constraints compile against.
:func:`default_tokenizer` loads the embedded default model's tokenizer once.
"""

from __future__ import annotations

import functools
from typing import Any

from language_pipes.models.default_model import prepare_default_model
from support.scripted_engine import ScriptedGenerator


@functools.cache
def default_tokenizer() -> Any:
    """The default model's tokenizer (the model is prepared in the store if missing, never skipped)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(prepare_default_model()))


class TokenizedGenerator(ScriptedGenerator):
    """Scripted answers, real chat encoding."""

    def __init__(self, model_id: str, pieces: list[str], tokenizer: Any, **options: Any) -> None:
        super().__init__(model_id, pieces, **options)
        self.tokenizer = tokenizer

    def encode_chat(self, messages: list[dict[str, object]]) -> list[int]:
        self.last_messages = messages
        rendered = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(self.tokenizer.encode(rendered, add_special_tokens=False))
