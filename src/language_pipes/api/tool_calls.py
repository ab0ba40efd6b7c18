"""Function tools: validating definitions, prompting for calls, and reading calls back.

Shared by ``/v1/responses`` and ``/v1/chat/completions`` (their tool shapes
differ only in where ``name`` sits). Tools reach the model as a model-agnostic
instruction block in the system prompt asking for a JSON object
``{"name": ..., "arguments": {...}}``. With ``tool_choice`` ``required`` or a
named tool that object is enforced by constrained decoding
(:mod:`language_pipes.engine.constraints`); with ``auto`` the text is parsed
tolerantly (reasoning block, prose and code fences around the JSON are fine;
anything that is not a call of a known tool stays plain text).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NewType

from language_pipes.api.errors import invalid_request
from language_pipes.api.reasoning import split_reasoning
from language_pipes.engine.constraints import (
    GrammarCompileError,
    GrammarConstraint,
    JsonSchema,
    check_json_schema,
    compact_json,
    tool_call_constraint,
)

CallId = NewType("CallId", str)
ToolApi = Literal["responses", "chat"]
ToolChoiceMode = Literal["auto", "none", "required"]

TOOL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_RESPONSES_TOOL_KEYS = {"type", "name", "description", "parameters", "strict"}
_CHAT_FUNCTION_KEYS = {"name", "description", "parameters", "strict"}
_NAME_KEYS = ("name", "tool", "tool_name", "function_name")
_ARGUMENT_KEYS = ("arguments", "parameters", "args", "input")


@dataclass(frozen=True)
class FunctionTool:
    """One custom function the model may call."""

    name: str
    description: str | None = None
    parameters: JsonSchema | None = None
    strict: bool | None = None


@dataclass(frozen=True)
class ForcedTool:
    """``tool_choice`` naming one function: the output must call it."""

    name: str


ToolChoice = ToolChoiceMode | ForcedTool


@dataclass(frozen=True)
class ParsedToolCall:
    """A call read from model output; ``arguments`` is compact JSON text of an object."""

    name: str
    arguments: str


def new_call_id() -> CallId:
    return CallId("call_" + secrets.token_hex(12))


# ---------------------------------------------------------------- validation


def _tool_definition(raw: Any, index: int, api: ToolApi) -> FunctionTool:
    where = f"tools[{index}]"
    if not isinstance(raw, dict):
        raise invalid_request(f"{where} must be an object.", param=where)
    tool_type = raw.get("type")
    if tool_type != "function":
        raise invalid_request(
            f"Tool type '{tool_type}' in {where} is not supported: only custom function tools "
            "(type 'function') are; hosted tools are not available on this server.",
            param=f"{where}.type",
            code="unsupported_tool_type",
        )
    if api == "chat":
        unknown = set(raw) - {"type", "function"}
        definition = raw.get("function")
        if not isinstance(definition, dict):
            raise invalid_request(f"{where}.function must be an object.", param=f"{where}.function")
        where = f"{where}.function"
        unknown |= set(definition) - _CHAT_FUNCTION_KEYS
    else:
        definition = raw
        unknown = set(raw) - _RESPONSES_TOOL_KEYS
    if unknown:
        raise invalid_request(f"Unknown field '{sorted(unknown)[0]}' in {where}.", param=where)
    name = definition.get("name")
    if not isinstance(name, str) or not TOOL_NAME_PATTERN.match(name):
        raise invalid_request(
            f"{where}.name must be 1 to 64 letters, digits, underscores or dashes.", param=f"{where}.name"
        )
    description = definition.get("description")
    if description is not None and not isinstance(description, str):
        raise invalid_request(f"{where}.description must be a string.", param=f"{where}.description")
    parameters = definition.get("parameters")
    if parameters is not None:
        if not isinstance(parameters, dict):
            raise invalid_request(
                f"{where}.parameters must be a JSON schema object.", param=f"{where}.parameters"
            )
        if parameters.get("type", "object") != "object":
            raise invalid_request(
                f"{where}.parameters must describe an object (type 'object'), "
                f"not '{parameters.get('type')}'.",
                param=f"{where}.parameters",
            )
    strict = definition.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise invalid_request(f"{where}.strict must be a boolean.", param=f"{where}.strict")
    return FunctionTool(name=name, description=description, parameters=parameters or None, strict=strict)


def validate_tools(raw: Any, api: ToolApi) -> list[FunctionTool]:
    """Check a request's ``tools`` array; 400 naming the offending entry and field."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise invalid_request("tools must be an array.", param="tools")
    tools = [_tool_definition(entry, index, api) for index, entry in enumerate(raw)]
    seen: set[str] = set()
    for tool in tools:
        if tool.name in seen:
            raise invalid_request(f"Tool name '{tool.name}' is defined twice.", param="tools")
        seen.add(tool.name)
    return tools


def validate_tool_choice(raw: Any, tools: Sequence[FunctionTool], api: ToolApi) -> ToolChoice:
    """Check ``tool_choice`` against the tools; defaults to ``auto`` with tools, ``none`` without."""
    if raw is None:
        return "auto" if tools else "none"
    if raw in ("auto", "none", "required"):
        if raw == "required" and not tools:
            raise invalid_request("tool_choice 'required' needs at least one tool in tools.", "tool_choice")
        return raw  # type: ignore[no-any-return]
    if not isinstance(raw, dict):
        raise invalid_request(
            "tool_choice must be 'auto', 'none', 'required' or {\"type\": \"function\", ...}.", "tool_choice"
        )
    if raw.get("type") != "function":
        raise invalid_request(
            f"tool_choice type '{raw.get('type')}' is not supported: only custom function tools are.",
            "tool_choice",
        )
    if api == "chat":
        function = raw.get("function")
        name = function.get("name") if isinstance(function, dict) else None
    else:
        name = raw.get("name")
    if not isinstance(name, str):
        raise invalid_request("tool_choice must name the function to call.", "tool_choice")
    if name not in {tool.name for tool in tools}:
        raise invalid_request(f"tool_choice names '{name}', which is not in tools.", "tool_choice")
    return ForcedTool(name)


def tools_for_choice(tools: Sequence[FunctionTool], choice: ToolChoice) -> list[FunctionTool]:
    """The tools the model may call under ``choice`` (none for ``none``)."""
    if choice == "none":
        return []
    if isinstance(choice, ForcedTool):
        return [tool for tool in tools if tool.name == choice.name]
    return list(tools)


def call_is_enforced(choice: ToolChoice) -> bool:
    """Whether the output is forced (by constrained decoding) to be a tool call."""
    return choice == "required" or isinstance(choice, ForcedTool)


def enforced_call_constraint(
    tokenizer: Any, tools: Sequence[FunctionTool], callable_tools: Sequence[FunctionTool], api: ToolApi
) -> GrammarConstraint:
    """The constraint that makes the model call one of ``callable_tools``; 400 naming a bad schema.

    Each callable tool's schema is compiled alone first, so the error names its
    index in the request's ``tools`` (``validate_tools`` keeps their order).
    """
    callable_names = {tool.name for tool in callable_tools}
    where = "function.parameters" if api == "chat" else "parameters"
    for index, tool in enumerate(tools):
        if tool.name in callable_names and tool.parameters:
            try:
                check_json_schema(tokenizer, tool.parameters, what=f"The parameters of tool '{tool.name}'")
            except GrammarCompileError as error:
                raise invalid_request(str(error), param=f"tools[{index}].{where}") from None
    try:
        return tool_call_constraint(tokenizer, {tool.name: tool.parameters for tool in callable_tools})
    except GrammarCompileError as error:
        # Each schema compiled alone; only their combination failed.
        raise invalid_request(str(error), param="tools") from None


# ---------------------------------------------------------------- prompting


def tool_instructions(tools: Sequence[FunctionTool], choice: ToolChoice) -> str | None:
    """The system-prompt block that tells any model how to call the tools (None: no tools offered)."""
    callable_tools = tools_for_choice(tools, choice)
    if not callable_tools:
        return None
    lines = ["You can call the following tools (functions):", ""]
    for tool in callable_tools:
        lines.append(f"- {tool.name}: {tool.description or 'no description'}")
        lines.append(f"  Parameters (JSON schema): {compact_json(tool.parameters or {'type': 'object'})}")
    lines.append("")
    lines.append(
        "To call a tool, reply with only this JSON object and nothing else: "
        '{"name": "<tool name>", "arguments": {<arguments matching the parameters schema>}}'
    )
    if isinstance(choice, ForcedTool):
        lines.append(f"You must call the tool '{choice.name}' now.")
    elif choice == "required":
        lines.append("You must call one of these tools now.")
    else:
        lines.append("If no tool is needed, answer normally in plain text.")
    return "\n".join(lines)


def render_tool_calls_text(calls: Sequence[ParsedToolCall]) -> str:
    """How an earlier assistant tool call is written back into the conversation."""
    rendered = []
    for call in calls:
        try:
            arguments: Any = json.loads(call.arguments) if call.arguments else {}
        except json.JSONDecodeError:  # a client-supplied history may carry arguments that are not JSON
            arguments = call.arguments
        rendered.append(compact_json({"name": call.name, "arguments": arguments}))
    return "\n".join(rendered)


def render_tool_result_text(name: str | None, call_id: str, output: str) -> str:
    """How a tool's result is shown to the model (as a user turn, which every chat template accepts)."""
    label = f"tool '{name}'" if name else "the tool"
    return f"Result of {label} (call {call_id}):\n{output}"


# ---------------------------------------------------------------- parsing


def _json_values(text: str) -> Iterator[tuple[int, int, Any]]:
    """Every JSON object or array embedded in ``text``: (start, end, value), left to right."""
    decoder = json.JSONDecoder()
    position = 0
    while position < len(text):
        starts = [index for index in (text.find("{", position), text.find("[", position)) if index >= 0]
        if not starts:
            return
        start = min(starts)
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:  # not JSON from here: try the next bracket
            position = start + 1
            continue
        yield start, end, value
        position = end


def _as_call(value: Any, tool_names: set[str]) -> ParsedToolCall | None:
    if not isinstance(value, dict):
        return None
    for nested_key in ("function", "tool_call", "function_call"):
        nested = value.get(nested_key)
        if isinstance(nested, dict):
            return _as_call(nested, tool_names)
    name = next((value[key] for key in _NAME_KEYS if isinstance(value.get(key), str)), None)
    if name not in tool_names:
        return None
    argument_key = next((key for key in _ARGUMENT_KEYS if key in value), None)
    arguments: Any = value.get(argument_key) if argument_key else {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:  # arguments given as a non-JSON string: not a usable call
            return None
    if not isinstance(arguments, dict):
        return None
    return ParsedToolCall(name=str(name), arguments=compact_json(arguments))


def parse_tool_calls(
    text: str, tools: Sequence[FunctionTool], *, parallel: bool = True
) -> list[ParsedToolCall]:
    """Tool calls found in free model output (empty: the output is plain text).

    A leading reasoning block is ignored; calls may sit in prose, code fences or
    ``<tool_call>`` tags, alone or in a JSON array. Only calls of known tools with
    object arguments count. ``parallel=False`` keeps the first call only.
    """
    answer = split_reasoning(text).answer
    tool_names = {tool.name for tool in tools}
    calls: list[ParsedToolCall] = []
    for _start, _end, value in _json_values(answer):
        if isinstance(value, dict) and isinstance(value.get("tool_calls"), list):
            value = value["tool_calls"]
        candidates = value if isinstance(value, list) else [value]
        for candidate in candidates:
            call = _as_call(candidate, tool_names)
            if call is not None:
                calls.append(call)
    return calls if parallel else calls[:1]


def parse_enforced_call(text: str) -> ParsedToolCall | None:
    """Read the output of the tool-call constraint (``{"name": ..., "arguments": {...}}``)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:  # cut off by the token limit before the grammar completed
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments")
    if not isinstance(arguments, dict):
        return None
    return ParsedToolCall(name=value["name"], arguments=compact_json(arguments))


_ENFORCED_PREFIX = re.compile(r'^\{"name": "([A-Za-z0-9_-]{1,64})", "arguments": ')


class EnforcedCallReader:
    """Streams the arguments of a constrained tool call as they are generated.

    The constraint's output is exactly ``{"name": "<tool>", "arguments": <object>}``
    in compact form, so the tool is known as soon as the prefix is complete and
    every later character except the final ``}`` belongs to the arguments.
    """

    def __init__(self) -> None:
        self._text = ""
        self._arguments_start: int | None = None
        self._sent = 0
        self.name: str | None = None

    def feed(self, delta: str) -> str:
        """Add generated text; returns argument text that is now certain (may be empty)."""
        self._text += delta
        if self._arguments_start is None:
            match = _ENFORCED_PREFIX.match(self._text)
            if match is None:
                return ""
            self.name = match.group(1)
            self._arguments_start = match.end()
        certain_end = max(self._arguments_start, len(self._text) - 1)
        new = self._text[self._arguments_start + self._sent : certain_end]
        self._sent += len(new)
        return new

    def finish(self, *, complete: bool) -> str:
        """The rest of the arguments; ``complete`` means the grammar closed the call object."""
        if self._arguments_start is None:
            return ""
        end = len(self._text) - 1 if complete else len(self._text)
        rest = self._text[self._arguments_start + self._sent : end]
        self._sent += len(rest)
        return rest

    @property
    def arguments(self) -> str:
        """All argument text sent so far."""
        if self._arguments_start is None:
            return ""
        return self._text[self._arguments_start : self._arguments_start + self._sent]
