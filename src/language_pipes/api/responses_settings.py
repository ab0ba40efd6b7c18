"""The request settings a Responses ``Response`` object echoes, and the fields they become.

:class:`ResponseSettings` is filled by :mod:`language_pipes.api.responses`
from the request; :func:`echoed_fields` turns it into the response fields the
:class:`~language_pipes.api.responses_stream.ResponseBuilder` snapshot carries
next to its own state (id, status, output, usage). Every field OpenAI's
objects and the Open Responses schema require is here, with the value this
server actually used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from openai.types.responses import FunctionTool, ResponseTextConfig

from language_pipes.api import tool_calls


@dataclass
class ResponseSettings:
    """The request settings a ``Response`` object echoes back."""

    model: str
    instructions: str | None = None
    tools: list[tool_calls.FunctionTool] = field(default_factory=list)
    tool_choice: tool_calls.ToolChoice = "auto"
    parallel_tool_calls: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    text_format: dict[str, Any] | None = None
    store: bool = True
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    user: str | None = None
    reasoning_summary: str | None = None


def _tool_choice_value(choice: tool_calls.ToolChoice) -> Any:
    if isinstance(choice, tool_calls.ForcedTool):
        return {"type": "function", "name": choice.name}
    return choice


def _tool_value(tool: tool_calls.FunctionTool) -> FunctionTool:
    return FunctionTool(
        type="function",
        name=tool.name,
        description=tool.description,
        parameters=tool.parameters,
        strict=tool.strict,
    )


def whole_seconds(response: dict[str, Any]) -> dict[str, Any]:
    """Timestamps as JSON integers, as OpenAI sends them (the SDK's model types them as floats)."""
    for key in ("created_at", "completed_at"):
        if isinstance(response.get(key), float):
            response[key] = int(response[key])
    return response


def echoed_fields(settings: ResponseSettings) -> dict[str, Any]:
    """The settings-derived fields of a response snapshot."""
    return {
        "parallel_tool_calls": settings.parallel_tool_calls,
        "tool_choice": _tool_choice_value(settings.tool_choice),
        "tools": [_tool_value(tool) for tool in settings.tools],
        "instructions": settings.instructions,
        "metadata": settings.metadata or {},
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "max_output_tokens": settings.max_output_tokens,
        "previous_response_id": settings.previous_response_id,
        "text": ResponseTextConfig.model_validate(
            {"format": settings.text_format or {"type": "text"}, "verbosity": "medium"}
        ),
        "presence_penalty": settings.presence_penalty,
        "frequency_penalty": settings.frequency_penalty,
        "max_tool_calls": settings.max_tool_calls,
        "store": settings.store,
        "safety_identifier": settings.safety_identifier,
        "prompt_cache_key": settings.prompt_cache_key,
        "user": settings.user,
        # What this server does, whatever was asked: no reasoning controls, the whole prompt or a
        # 400, no log probabilities, the answer while the request is open, one service tier.
        "reasoning": {"effort": None, "summary": settings.reasoning_summary},
        "truncation": "disabled",
        "top_logprobs": 0,
        "background": False,
        "service_tier": "default",
    }
