"""Typed request bodies of the OpenAI-compatible API, validated once at the edge.

Every model is strict (no string-to-number coercion) and forbids unknown fields,
so a parameter is either honoured, rejected by a support check, or reported as
unrecognised: never silently ignored. :func:`validation_error_to_api_error`
turns pydantic's errors into OpenAI's 400 envelope naming the parameter
(``messages[0].content``, ``temperature``, ...).

:class:`SamplingFields` holds the sampling parameters shared by every
generating endpoint (chat completions and responses); subclass it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from language_pipes.api.errors import APIError, invalid_request
from language_pipes.engine.types import SamplingParams

MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 256
# Below this a temperature is greedy: dividing logits by it would overflow to inf (and NaN).
GREEDY_BELOW_TEMPERATURE = 1e-4
# What the sampler's torch.Generator accepts is wider; OpenAI documents a 64-bit signed seed.
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1
MAX_TOP_K = 2**31 - 1

ModelT = TypeVar("ModelT", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every request model: exact JSON types, unknown fields rejected."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=False)


def _string_or_list(value: Any) -> str | None:
    if isinstance(value, str):
        return "as-string"
    return "as-list" if isinstance(value, list) else None


def string_or_list(what: str) -> Discriminator:
    """The discriminator of a ``str | list[...]`` union (branches tagged ``as-string`` / ``as-list``),
    so only the matching branch reports errors; ``what`` names what the list holds."""
    return Discriminator(
        _string_or_list,
        custom_error_type="string_or_list_type",
        custom_error_message=f"Input should be a string or a list of {what}",
    )


class SamplingFields(StrictModel):
    """Sampling parameters with OpenAI's ranges; ``None`` means the documented default."""

    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=0, le=MAX_TOP_K)] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    seed: Annotated[int, Field(ge=SEED_MIN, le=SEED_MAX)] | None = None

    def effective_temperature(self) -> float:
        """The requested temperature, with values too small to divide by treated as 0 (greedy)."""
        if self.temperature is None:
            return SamplingParams().temperature
        temperature = float(self.temperature)
        return 0.0 if temperature < GREEDY_BELOW_TEMPERATURE else temperature

    def sampling_params(self) -> SamplingParams:
        defaults = SamplingParams()
        return SamplingParams(
            temperature=self.effective_temperature(),
            top_p=defaults.top_p if self.top_p is None else float(self.top_p),
            top_k=defaults.top_k if self.top_k is None else self.top_k,
            min_p=defaults.min_p if self.min_p is None else float(self.min_p),
            presence_penalty=(
                defaults.presence_penalty if self.presence_penalty is None else float(self.presence_penalty)
            ),
            frequency_penalty=(
                defaults.frequency_penalty
                if self.frequency_penalty is None
                else float(self.frequency_penalty)
            ),
            seed=self.seed,
        )


# --- chat messages -------------------------------------------------------------------------------


class TextContentPart(StrictModel):
    """``{"type": "text", "text": ...}``; any other part type is rejected with a clear message."""

    type: Literal["text"]
    text: str

    @model_validator(mode="before")
    @classmethod
    def _only_text_parts(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("type") not in (None, "text"):
            raise PydanticCustomError(
                "unsupported_content_part",
                "Only text content parts are supported; got a part of type '{part_type}'.",
                {"part_type": value.get("type")},
            )
        return value


MessageContent = Annotated[
    Annotated[str, Tag("as-string")] | Annotated[list[TextContentPart], Tag("as-list")],
    string_or_list("text parts"),
]


class FunctionCall(StrictModel):
    name: str
    arguments: str


class ToolCall(StrictModel):
    """A tool call the assistant made earlier in the conversation."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


ChatRole = Literal["system", "developer", "user", "assistant", "tool"]


class ChatMessage(StrictModel):
    """One message of a chat conversation; ``developer`` is treated as ``system``."""

    role: ChatRole
    content: MessageContent | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None
    # An earlier answer's reasoning sent back as this server returned it: accepted, not shown again
    # (as with reasoning items in the Responses API).
    reasoning_content: str | None = None

    @model_validator(mode="after")
    def _fields_fit_role(self) -> ChatMessage:
        if self.role == "assistant":
            if self.content is None and not self.tool_calls:
                raise PydanticCustomError(
                    "missing_content", "An assistant message needs 'content' or 'tool_calls'."
                )
        elif self.content is None:
            raise PydanticCustomError(
                "missing_content", "A {role} message needs 'content'.", {"role": self.role}
            )
        if self.tool_calls is not None and self.role != "assistant":
            raise PydanticCustomError("misplaced_field", "Only assistant messages may have 'tool_calls'.")
        if self.role == "tool" and self.tool_call_id is None:
            raise PydanticCustomError("missing_tool_call_id", "A tool message needs 'tool_call_id'.")
        return self

    def text(self) -> str:
        """The content as one string (text parts joined without separator)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


# --- tools and output format (accepted by the schema; support is decided by the endpoint) -------


class FunctionDefinition(StrictModel):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(StrictModel):
    """A custom function tool; hosted tool types are rejected with a message naming them."""

    type: Literal["function"]
    function: FunctionDefinition

    @model_validator(mode="before")
    @classmethod
    def _only_function_tools(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("type") not in (None, "function"):
            raise PydanticCustomError(
                "unsupported_tool_type",
                "Tool type '{tool_type}' is not supported: only custom function tools (type 'function') "
                "are; hosted tools are not available on this server.",
                {"tool_type": value.get("type")},
            )
        return value


class NamedFunction(StrictModel):
    name: str


class NamedToolChoice(StrictModel):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class TextFormat(StrictModel):
    type: Literal["text"]


class JsonObjectFormat(StrictModel):
    type: Literal["json_object"]


class JsonSchemaSpec(StrictModel):
    name: str
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class JsonSchemaFormat(StrictModel):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


# --- chat completions request ---------------------------------------------------------------------


class StreamOptions(StrictModel):
    include_usage: bool | None = None
    # Only affects padding OpenAI adds to chunks; nothing to do here.
    include_obfuscation: bool | None = None


StopText = Annotated[str, Field(max_length=MAX_STOP_CHARS)]
StopSequences = Annotated[
    Annotated[StopText, Tag("as-string")]
    | Annotated[list[StopText], Field(max_length=MAX_STOP_SEQUENCES), Tag("as-list")],
    string_or_list(f"up to {MAX_STOP_SEQUENCES} strings"),
]


class ChatCompletionRequest(SamplingFields):
    """``POST /v1/chat/completions``."""

    model: Annotated[str, Field(min_length=1)]
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: StopSequences | None = None
    n: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    logit_bias: dict[str, float] | None = None
    tools: list[ChatTool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    # Caller metadata with no effect on generation.
    user: str | None = None
    metadata: dict[str, str] | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    store: bool | None = None
    service_tier: Literal["auto", "default"] | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return tuple(stop for stop in stops if stop)

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


# --- validation errors -> OpenAI envelope ---------------------------------------------------------

_FIELD_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_PYDANTIC_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def param_path(location: tuple[int | str, ...]) -> str:
    """``("messages", 0, "as-list", 1)`` -> ``"messages[0].content[1]"``-style names a client understands.

    Pydantic inserts union-branch tags and model names into locations; those are
    dropped (our JSON field names are all lower-case identifiers).
    """
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _FIELD_NAME.match(part) and part not in _PYDANTIC_TYPE_TAGS:
            path += f".{part}" if path else part
    return path


def _error_message(error: ErrorDetails, param: str) -> str:
    if error["type"] == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}"
    if error["type"] == "missing":
        return f"Missing required parameter: '{param}'."
    if not param:
        return f"Invalid request body: {error['msg']}"
    return f"Invalid value for '{param}': {error['msg']}"


def validation_error_to_api_error(errors: list[ErrorDetails], location_prefix: int = 0) -> APIError:
    """The first pydantic error as a 400 naming its parameter.

    ``location_prefix`` drops leading location parts FastAPI adds (``("body", ...)``).
    """
    if not errors:
        return invalid_request("Invalid request body.")
    first = errors[0]
    param = param_path(tuple(first["loc"])[location_prefix:])
    return invalid_request(_error_message(first, param), param=param or None)


def validate_body(model: type[ModelT], payload: object) -> ModelT:
    """Validate a decoded JSON body; raises the 400 :class:`APIError` naming the bad parameter."""
    if not isinstance(payload, dict):
        raise invalid_request("The request body must be a JSON object.")
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        raise validation_error_to_api_error(error.errors()) from None
