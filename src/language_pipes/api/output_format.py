"""Structured output, as either endpoint asks for it: its token constraint and its prompt hint.

Chat's ``response_format`` and Responses' ``text.format`` both name a JSON
schema the answer must match, or ask for any JSON object; both become a
:class:`StructuredOutput`, which compiles the constraint (a 400 naming the
parameter when the schema cannot be compiled) and words the system-prompt hint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from language_pipes.api.errors import invalid_request
from language_pipes.engine.constraints import (
    GrammarCompileError,
    GrammarConstraint,
    JsonSchema,
    compact_json,
    json_object_constraint,
    json_schema_constraint,
)


@dataclass(frozen=True)
class StructuredOutput:
    """An answer that must be JSON: matching ``schema``, or any object when it is None."""

    schema: JsonSchema | None
    # The request parameter that holds the schema, named by a 400.
    param: str

    def hint(self) -> str:
        """What the system prompt tells the model about the format."""
        if self.schema is None:
            return "Answer only with a JSON object."
        return "Answer only with a JSON value that matches this JSON schema: " + compact_json(self.schema)

    def constraint(self, tokenizer: Any) -> GrammarConstraint:
        """The constraint that enforces the format (compiling can take a moment: not on the event loop)."""
        if self.schema is None:
            return json_object_constraint(tokenizer)
        try:
            return json_schema_constraint(tokenizer, self.schema, what=self.param)
        except GrammarCompileError as error:
            raise invalid_request(str(error), param=self.param) from None
