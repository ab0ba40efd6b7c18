"""The typed ``POST /v1/responses`` request body.

Strict like every request model (:mod:`language_pipes.api.schemas`): an
unknown field is a 400 naming it. ``tools`` and ``tool_choice`` are kept as
raw JSON here and checked by :mod:`language_pipes.api.tool_calls`, which words
the errors about hosted tool types. The response side is built from the
``openai`` package's own types (see :mod:`language_pipes.api.responses_stream`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator
from pydantic_core import PydanticCustomError

from language_pipes.api.output_format import StructuredOutput
from language_pipes.api.schemas import SamplingFields, StrictModel, string_or_list

InputRole = Literal["user", "system", "developer", "assistant"]


class InputTextPart(StrictModel):
    """A text part of a message: ``input_text`` (user side) or ``output_text`` (earlier answers)."""

    type: Literal["input_text", "output_text", "text"]
    text: str
    # Present when a client sends an earlier response's output back as input.
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _only_text(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("type") not in ("input_text", "output_text", "text"):
            raise PydanticCustomError(
                "unsupported_content_part",
                "Only text content parts (input_text, output_text) are supported; got '{part_type}'.",
                {"part_type": value.get("type")},
            )
        return value


TextContent = Annotated[
    Annotated[str, Tag("as-string")] | Annotated[list[InputTextPart], Tag("as-list")],
    string_or_list("text parts"),
]


def content_text(content: str | list[InputTextPart]) -> str:
    return content if isinstance(content, str) else "".join(part.text for part in content)


class MessageItem(StrictModel):
    """A conversation message (``type`` may be omitted, as in the SDK's easy input form)."""

    type: Literal["message"] = "message"
    role: InputRole
    content: TextContent
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    phase: str | None = None


class FunctionCallItem(StrictModel):
    """A tool call the model made earlier; its result follows as a function_call_output."""

    type: Literal["function_call"]
    call_id: Annotated[str, Field(min_length=1)]
    name: Annotated[str, Field(min_length=1)]
    arguments: str
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallOutputItem(StrictModel):
    """The client's result for an earlier function_call, linked by ``call_id``."""

    type: Literal["function_call_output"]
    call_id: Annotated[str, Field(min_length=1)]
    output: TextContent
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class SummaryText(StrictModel):
    type: Literal["summary_text"]
    text: str


class ReasoningInputItem(StrictModel):
    """An earlier response's reasoning item sent back; accepted, not shown to the model again."""

    type: Literal["reasoning"]
    id: str | None = None
    summary: list[SummaryText] = []
    content: list[Any] | None = None
    encrypted_content: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


_ITEM_TYPES = frozenset({"message", "function_call", "function_call_output", "reasoning"})


def _item_type(value: Any) -> str | None:
    if isinstance(value, dict):
        item_type = value.get("type", "message")
        return item_type if item_type in _ITEM_TYPES else None
    return None


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningInputItem, Tag("reasoning")],
    Discriminator(
        _item_type,
        custom_error_type="unsupported_input_item",
        custom_error_message=(
            "Input items must be messages, function_call, function_call_output or reasoning items"
        ),
    ),
]

ResponseInput = Annotated[
    Annotated[str, Tag("as-string")] | Annotated[list[InputItem], Tag("as-list")],
    string_or_list("input items"),
]


class TextFormatText(StrictModel):
    type: Literal["text"]


class TextFormatJsonObject(StrictModel):
    type: Literal["json_object"]


class TextFormatJsonSchema(StrictModel):
    type: Literal["json_schema"]
    name: Annotated[str, Field(min_length=1, max_length=64)]
    json_schema: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


TextFormat = Annotated[
    TextFormatText | TextFormatJsonObject | TextFormatJsonSchema, Field(discriminator="type")
]


class TextConfig(StrictModel):
    """``text``: the output format (structured output through constrained decoding)."""

    format: TextFormat | None = None
    # Only the default is possible: the model's length is not steerable beyond max_output_tokens.
    verbosity: Literal["medium"] | None = None


class ReasoningConfig(StrictModel):
    """``reasoning``: only the summary is accepted (``api.responses.check_request_options`` refuses effort).

    A reasoning model's whole thinking text becomes the reasoning item's summary, so
    ``auto`` and ``detailed`` are what it gets; a shorter (``concise``) summary is not made.
    """

    effort: str | None = None
    summary: Literal["auto", "detailed"] | None = None
    # The deprecated name of ``summary``.
    generate_summary: Literal["auto", "detailed"] | None = None


# "reasoning.encrypted_content": the node keeps no hidden reasoning (the whole thinking text is the
# summary) and does not show earlier reasoning to the model again, so there is nothing to encrypt.
IncludeValue = Literal["reasoning.encrypted_content"]


class ResponsesRequest(SamplingFields):
    """``POST /v1/responses``."""

    model: Annotated[str, Field(min_length=1)]
    input: ResponseInput
    instructions: str | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    stream: bool | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    store: bool | None = None
    previous_response_id: Annotated[str, Field(min_length=1)] | None = None
    text: TextConfig | None = None
    # "disabled" is what this server does: a prompt that does not fit is a 400.
    truncation: Literal["disabled"] | None = None
    # Echoed back on the response object.
    metadata: dict[str, str] | None = None
    # Caller metadata with no effect on generation.
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    service_tier: Literal["auto", "default"] | None = None
    # Accepted so clients may send their defaults; anything else is refused by check_request_options
    # (nothing runs in the background, and no log probabilities are computed).
    background: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    # The most function calls one response may carry (calls past it are dropped).
    max_tool_calls: Annotated[int, Field(ge=1)] | None = None
    reasoning: ReasoningConfig | None = None
    include: list[IncludeValue] | None = None
    # Caller metadata with no effect on generation (Codex sends its session ids here).
    client_metadata: dict[str, str] | None = None

    def requested_max_tokens(self) -> int | None:
        for value in (self.max_output_tokens, self.max_completion_tokens, self.max_tokens):
            if value is not None:
                return value
        return None

    def conflicting_token_limit(self) -> str | None:
        """The name of an alias that disagrees with the others, if any."""
        given = {
            name: value
            for name, value in (
                ("max_output_tokens", self.max_output_tokens),
                ("max_completion_tokens", self.max_completion_tokens),
                ("max_tokens", self.max_tokens),
            )
            if value is not None
        }
        if len(set(given.values())) > 1:
            return list(given)[-1]
        return None

    def input_items(
        self,
    ) -> list[MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningInputItem]:
        if isinstance(self.input, str):
            return [MessageItem(role="user", content=self.input)]
        return list(self.input)

    def reasoning_summary(self) -> str | None:
        if self.reasoning is None:
            return None
        return self.reasoning.summary or self.reasoning.generate_summary

    def output_format(self) -> TextFormatText | TextFormatJsonObject | TextFormatJsonSchema | None:
        return self.text.format if self.text is not None else None

    def structured_output(self) -> StructuredOutput | None:
        """The JSON the answer must be (``text.format``), if any."""
        output_format = self.output_format()
        if isinstance(output_format, TextFormatJsonSchema):
            return StructuredOutput(output_format.json_schema, "text.format.schema")
        if isinstance(output_format, TextFormatJsonObject):
            return StructuredOutput(None, "text.format")
        return None
