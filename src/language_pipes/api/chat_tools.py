"""Tools and structured output for ``/v1/chat/completions``: the chat side of the generation plan.

The chat endpoint calls, in order:

1. :func:`plan_chat_output` (in a worker thread: compiling a grammar can take
   a moment) to validate ``tools`` / ``tool_choice`` / ``response_format`` and
   get the token constraint to put on the :class:`GenerationRequest`;
2. :func:`chat_template_messages` instead of its own message conversion:
   the tool instruction block joins the system message, and ``tool`` turns and
   assistant ``tool_calls`` are written in a form every chat template accepts;
3. :meth:`ChatOutputPlan.reading` for how the shared
   :class:`~language_pipes.api.output.OutputInterpreter` reads the output
   (the output modes of both endpoints are described there); the items are
   rendered by :mod:`language_pipes.api.chat_render`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from language_pipes.api import tool_calls
from language_pipes.api.errors import invalid_request
from language_pipes.api.output import OutputMode, OutputReading, output_mode
from language_pipes.api.output_format import StructuredOutput
from language_pipes.api.schemas import ChatCompletionRequest, JsonObjectFormat, JsonSchemaFormat
from language_pipes.engine.constraints import GrammarConstraint
from language_pipes.engine.types import TextGenerator


@dataclass
class ChatOutputPlan:
    """What a chat request's output may be, decided before generation."""

    tools: list[tool_calls.FunctionTool]
    tool_choice: tool_calls.ToolChoice
    mode: OutputMode
    parallel_tool_calls: bool
    constraint: GrammarConstraint | None
    system_additions: list[str] = field(default_factory=list)

    @property
    def callable_tools(self) -> list[tool_calls.FunctionTool]:
        return tool_calls.tools_for_choice(self.tools, self.tool_choice)

    def reading(self, *, starts_in_reasoning: bool) -> OutputReading:
        """How the output is read: reasoning is looked for only in unconstrained output."""
        return OutputReading(
            mode=self.mode,
            callable_tools=self.callable_tools,
            parallel_tool_calls=self.parallel_tool_calls,
            starts_in_reasoning=starts_in_reasoning and self.constraint is None,
        )


def _structured_output(body: ChatCompletionRequest) -> StructuredOutput | None:
    response_format = body.response_format
    if isinstance(response_format, JsonSchemaFormat):
        schema = response_format.json_schema.json_schema or {"type": "object"}
        return StructuredOutput(schema, "response_format.json_schema.schema")
    if isinstance(response_format, JsonObjectFormat):
        return StructuredOutput(None, "response_format")
    return None


def plan_chat_output(body: ChatCompletionRequest, generator: TextGenerator) -> ChatOutputPlan:
    """Validate tools, tool_choice and response_format (400s name the parameter); build the constraint."""
    raw_tools = [tool.model_dump(exclude_none=True) for tool in body.tools] if body.tools else None
    tools = tool_calls.validate_tools(raw_tools, "chat")
    raw_choice: Any = body.tool_choice
    if raw_choice is not None and not isinstance(raw_choice, str):
        raw_choice = raw_choice.model_dump()
    choice = tool_calls.validate_tool_choice(raw_choice, tools, "chat")
    callable_tools = tool_calls.tools_for_choice(tools, choice)
    structured = _structured_output(body)
    if structured is not None and callable_tools:
        raise invalid_request(
            "response_format json_object/json_schema cannot be combined with tools "
            "unless tool_choice is 'none'.",
            param="response_format",
        )
    additions = [block] if (block := tool_calls.tool_instructions(tools, choice)) else []
    mode = output_mode(choice, callable_tools)
    constraint: GrammarConstraint | None = None
    if mode == "enforced_call":
        constraint = tool_calls.enforced_call_constraint(generator.tokenizer, tools, callable_tools, "chat")
    elif structured is not None:
        constraint = structured.constraint(generator.tokenizer)
        additions.append(structured.hint())
    return ChatOutputPlan(
        tools=tools,
        tool_choice=choice,
        mode=mode,
        parallel_tool_calls=body.parallel_tool_calls is not False,
        constraint=constraint,
        system_additions=additions,
    )


def chat_template_messages(body: ChatCompletionRequest, plan: ChatOutputPlan) -> list[dict[str, object]]:
    """The conversation for the chat template: one leading system message (with the tool block),
    assistant tool calls as their JSON, tool results as user turns naming the call."""
    call_names: dict[str, str] = {}
    system_parts: list[str] = []
    turns: list[dict[str, str]] = []

    def add(role: str, content: str) -> None:
        if turns and turns[-1]["role"] == role:
            # Consecutive turns of one role (several tool results): many templates insist on alternation.
            turns[-1] = {"role": role, "content": turns[-1]["content"] + "\n\n" + content}
        else:
            turns.append({"role": role, "content": content})

    for message in body.messages:
        role = "system" if message.role == "developer" else message.role
        if role == "system" and not turns:
            system_parts.append(message.text())
        elif role == "tool":
            name = call_names.get(message.tool_call_id or "")
            add("user", tool_calls.render_tool_result_text(name, message.tool_call_id or "", message.text()))
        elif role == "assistant" and message.tool_calls:
            calls = []
            for call in message.tool_calls:
                call_names[call.id] = call.function.name
                calls.append(tool_calls.ParsedToolCall(call.function.name, call.function.arguments))
            prefix = message.text() + "\n" if message.text() else ""
            add("assistant", prefix + tool_calls.render_tool_calls_text(calls))
        else:
            add(role, message.text())
    system_parts.extend(plan.system_additions)
    messages: list[dict[str, object]] = []
    if system_parts:
        messages.append({"role": "system", "content": "\n\n".join(system_parts)})
    messages.extend(turns)
    return messages
