"""The request settings a Responses ``Response`` object echoes back, in the SDK's types.

:func:`response_settings` reads them off a planned request once;
:func:`echoed_settings` gives the snapshot fields the builder
(:mod:`language_pipes.api.responses_stream`) merges into every ``Response``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from openai.types.responses import FunctionTool, ResponseTextConfig

from language_pipes.api import tool_calls
from language_pipes.api.responses_plan import ResponsePlan


@dataclass
class ResponseSettings:
    """The request settings a ``Response`` object echoes back."""

    model: str
    instructions: str | None = None
    tools: list[tool_calls.FunctionTool] = field(default_factory=list)
    tool_choice: tool_calls.ToolChoice = "auto"
    parallel_tool_calls: bool = True
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    text_format: dict[str, Any] | None = None
    store: bool = True


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


def echoed_settings(settings: ResponseSettings) -> dict[str, Any]:
    """The fields of a ``Response`` that repeat the request's settings."""
    return {
        "model": settings.model,
        "parallel_tool_calls": settings.parallel_tool_calls,
        "tool_choice": _tool_choice_value(settings.tool_choice),
        "tools": [_tool_value(tool) for tool in settings.tools],
        "instructions": settings.instructions,
        "metadata": settings.metadata or {},
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "max_output_tokens": settings.max_output_tokens,
        "previous_response_id": settings.previous_response_id,
        "text": ResponseTextConfig.model_validate({"format": settings.text_format or {"type": "text"}}),
    }


def response_settings(plan: ResponsePlan) -> ResponseSettings:
    body = plan.body
    output_format = body.output_format()
    return ResponseSettings(
        model=body.model,
        instructions=body.instructions,
        tools=plan.tools,
        tool_choice=plan.tool_choice,
        parallel_tool_calls=body.parallel_tool_calls is not False,
        temperature=plan.generation.sampling.temperature,
        top_p=plan.generation.sampling.top_p,
        max_output_tokens=body.requested_max_tokens(),
        previous_response_id=body.previous_response_id,
        metadata=body.metadata,
        text_format=output_format.model_dump(by_alias=True, exclude_none=True) if output_format else None,
        store=body.store is not False,
    )
