"""Constrained decoding: token masks that force output to match a JSON schema.

Built on llguidance. A :class:`GrammarConstraint` implements the engine's
:class:`~language_pipes.engine.types.TokenConstraint`: before each sampling
step the engine asks for the allowed tokens (the mask is applied to the
logits on the origin, so it works however the layers are split across
nodes), then reports the token it picked. Once the grammar is complete only
the stop tokens are allowed, and :meth:`GrammarConstraint.is_finished` says so.

Three grammars are offered: any JSON schema, any JSON object, and a function
call ``{"name": <allowed tool>, "arguments": <object valid for that tool>}``.
JSON is generated compactly (``", "`` and ``": "`` separators, no other
whitespace) so a small model cannot wander off into endless blank lines.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import llguidance
import llguidance.hf
import torch

JsonSchema = dict[str, Any]

COMPACT_JSON_OPTIONS: llguidance.JsonCompileOptions = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}

# Turning a transformers tokenizer into an llguidance one takes about a second, so it is
# done once per tokenizer; the weak keys let it go when the model is unloaded.
_guidance_tokenizers: weakref.WeakKeyDictionary[object, llguidance.LLTokenizer] = weakref.WeakKeyDictionary()
_guidance_tokenizers_lock = threading.Lock()


class GrammarCompileError(ValueError):
    """The schema cannot be enforced (invalid, or uses a keyword llguidance does not implement)."""


def guidance_tokenizer(tokenizer: Any) -> llguidance.LLTokenizer:
    """The llguidance view of a transformers fast tokenizer (cached per tokenizer object)."""
    with _guidance_tokenizers_lock:
        cached = _guidance_tokenizers.get(tokenizer)
        if cached is None:
            cached = llguidance.hf.from_tokenizer(tokenizer)
            _guidance_tokenizers[tokenizer] = cached
        return cached


def default_stop_token_ids(tokenizer: Any) -> tuple[int, ...]:
    """The tokenizer's end-of-sequence id(s); the engine's stop set should include these."""
    eos = tokenizer.eos_token_id
    if eos is None:
        return ()
    return tuple(eos) if isinstance(eos, list) else (int(eos),)


class GrammarConstraint:
    """A TokenConstraint driven by one llguidance matcher (one per sequence, not shared)."""

    def __init__(self, matcher: llguidance.LLMatcher, stop_token_ids: Sequence[int]) -> None:
        self._matcher = matcher
        self._stop_token_ids = tuple(stop_token_ids)
        self._stopped_by_token = False
        self._bit_positions = torch.arange(32, dtype=torch.int32)

    @property
    def error(self) -> str | None:
        """Why the matcher gave up (a token outside the grammar was forced on it), if it did."""
        return self._matcher.get_error() if self._matcher.is_error() else None

    def is_complete(self) -> bool:
        """Whether the text so far is a full match of the grammar."""
        return not self._matcher.is_error() and (self._matcher.is_accepting() or self._matcher.is_stopped())

    def allowed_tokens(self, vocab_size: int) -> torch.Tensor | None:
        allowed = torch.zeros(vocab_size, dtype=torch.bool)
        if not self._matcher.is_error() and not self._stopped_by_token:
            words = torch.frombuffer(bytearray(self._matcher.compute_bitmask()), dtype=torch.int32)
            bits = ((words.unsqueeze(1) >> self._bit_positions) & 1).flatten().bool()
            shared = min(vocab_size, bits.numel())
            allowed[:shared] = bits[:shared]
        if self.is_complete() or self._matcher.is_error() or self._stopped_by_token:
            for token_id in self._stop_token_ids:
                if token_id < vocab_size:
                    allowed[token_id] = True
        return allowed

    def accept(self, token_id: int) -> None:
        if token_id in self._stop_token_ids:
            self._stopped_by_token = True
            return
        # A rejected token leaves the matcher in its error state; allowed_tokens then only
        # offers stop tokens, and ``error`` says what happened.
        self._matcher.consume_token(token_id)

    def is_finished(self) -> bool:
        return self._stopped_by_token or self._matcher.is_stopped()

    def forced_tokens(self) -> list[int]:
        """Tokens the grammar forces next (speculative decoding drafts them); none once finished."""
        if self._stopped_by_token or self._matcher.is_error() or self._matcher.is_stopped():
            return []
        return list(self._matcher.compute_ff_tokens())

    def valid_prefix(self, tokens: list[int]) -> int:
        """How many of ``tokens``, in order, the grammar would accept from its current state."""
        if self._stopped_by_token or self._matcher.is_error():
            return 0
        return int(self._matcher.validate_tokens(tokens))


def _compile(tokenizer: Any, grammar: str, what: str) -> llguidance.LLMatcher:
    guidance = guidance_tokenizer(tokenizer)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, guidance)
    if is_error:
        raise GrammarCompileError(f"{what} cannot be enforced: {messages[0]}")
    matcher = llguidance.LLMatcher(guidance, grammar, log_level=0)
    if matcher.is_error():
        raise GrammarCompileError(f"{what} cannot be enforced: {matcher.get_error()}")
    return matcher


def _schema_grammar(schema: JsonSchema, what: str) -> str:
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=COMPACT_JSON_OPTIONS)
    except ValueError as error:  # raised for a schema that is not a JSON object
        raise GrammarCompileError(f"{what} is not a valid JSON schema: {error}") from error


def check_json_schema(tokenizer: Any, schema: JsonSchema, what: str = "The JSON schema") -> None:
    """Raise GrammarCompileError now (at request validation) if the schema cannot be enforced."""
    _compile(tokenizer, _schema_grammar(schema, what), what)


def json_schema_constraint(
    tokenizer: Any,
    schema: JsonSchema,
    *,
    stop_token_ids: Sequence[int] | None = None,
    what: str = "The JSON schema",
) -> GrammarConstraint:
    """Output is one JSON value valid against ``schema``."""
    matcher = _compile(tokenizer, _schema_grammar(schema, what), what)
    stops = default_stop_token_ids(tokenizer) if stop_token_ids is None else stop_token_ids
    return GrammarConstraint(matcher, stops)


def json_object_constraint(
    tokenizer: Any, *, stop_token_ids: Sequence[int] | None = None
) -> GrammarConstraint:
    """Output is any JSON object."""
    return json_schema_constraint(tokenizer, {"type": "object"}, stop_token_ids=stop_token_ids)


def tool_call_schema(tool_parameters: Mapping[str, JsonSchema | None]) -> JsonSchema:
    """JSON schema of ``{"name": <tool>, "arguments": <its parameters>}`` for any of the tools.

    ``name`` comes first, so a streaming reader knows the tool before the arguments begin.
    """
    variants: list[JsonSchema] = []
    for name, parameters in tool_parameters.items():
        variants.append(
            {
                "type": "object",
                "properties": {
                    "name": {"const": name},
                    "arguments": parameters if parameters else {"type": "object"},
                },
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    if not variants:
        raise GrammarCompileError("A tool call needs at least one tool.")
    return variants[0] if len(variants) == 1 else {"anyOf": variants}


def tool_call_constraint(
    tokenizer: Any,
    tool_parameters: Mapping[str, JsonSchema | None],
    *,
    stop_token_ids: Sequence[int] | None = None,
) -> GrammarConstraint:
    """Output is exactly one call of one of the given tools with schema-valid arguments."""
    schema = tool_call_schema(tool_parameters)
    return json_schema_constraint(
        tokenizer, schema, stop_token_ids=stop_token_ids, what="The tools' parameters schema"
    )


def compact_json(value: Any) -> str:
    """JSON text in the same compact form the constrained decoder produces."""
    return json.dumps(value, separators=(", ", ": "), ensure_ascii=False)
