"""Tools, structured output and the reasoning split for ``/v1/chat/completions``.

The chat endpoint calls, in order:

1. :func:`plan_chat_output` (in a worker thread: compiling a grammar can take
   a moment) to validate ``tools`` / ``tool_choice`` / ``response_format`` and
   get the token constraint to put on the :class:`GenerationRequest`;
2. :func:`chat_template_messages` instead of its own message conversion:
   the tool instruction block joins the system message, and ``tool`` turns and
   assistant ``tool_calls`` are written in a form every chat template accepts;
3. :func:`chat_message` for a whole answer (``content``, ``reasoning_content``,
   ``tool_calls``, ``finish_reason``), or a :class:`ChatDeltaInterpreter` for
   a stream (``delta.content``, ``delta.reasoning_content``,
   ``delta.tool_calls``).

Output modes are those of the Responses endpoint: plain text (reasoning and
answer stream live), ``auto`` tools (reasoning live, answer buffered and then
parsed), and an enforced call (``required`` / a named tool: constrained
decoding guarantees the call, whose arguments stream as they are generated).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from openai.types.chat import ChatCompletionMessage, ChatCompletionMessageFunctionToolCall
from openai.types.chat.chat_completion_chunk import (
    ChoiceDelta,
    ChoiceDeltaToolCall,
    ChoiceDeltaToolCallFunction,
)
from openai.types.chat.chat_completion_message_function_tool_call import Function

from language_pipes.api import tool_calls
from language_pipes.api.errors import invalid_request
from language_pipes.api.reasoning import (
    AnswerDelta,
    ReasoningDelta,
    ReasoningSplitter,
    SplitEvent,
    split_reasoning,
)
from language_pipes.api.schemas import ChatCompletionRequest, JsonObjectFormat, JsonSchemaFormat
from language_pipes.engine.constraints import (
    GrammarCompileError,
    GrammarConstraint,
    compact_json,
    json_object_constraint,
    json_schema_constraint,
)
from language_pipes.engine.types import FinishReason, TextGenerator

ChatOutputMode = Literal["text", "auto_tools", "enforced_call"]
ChatFinishReason = Literal["stop", "length", "tool_calls"]


@dataclass
class ChatOutputPlan:
    """What a chat request's output may be, decided before generation."""

    tools: list[tool_calls.FunctionTool]
    tool_choice: tool_calls.ToolChoice
    mode: ChatOutputMode
    parallel_tool_calls: bool
    constraint: GrammarConstraint | None
    system_additions: list[str] = field(default_factory=list)

    @property
    def callable_tools(self) -> list[tool_calls.FunctionTool]:
        return tool_calls.tools_for_choice(self.tools, self.tool_choice)


def plan_chat_output(body: ChatCompletionRequest, generator: TextGenerator) -> ChatOutputPlan:
    """Validate tools, tool_choice and response_format (400s name the parameter); build the constraint."""
    raw_tools = [tool.model_dump(exclude_none=True) for tool in body.tools] if body.tools else None
    tools = tool_calls.validate_tools(raw_tools, "chat")
    raw_choice: Any = body.tool_choice
    if raw_choice is not None and not isinstance(raw_choice, str):
        raw_choice = raw_choice.model_dump()
    choice = tool_calls.validate_tool_choice(raw_choice, tools, "chat")
    callable_tools = tool_calls.tools_for_choice(tools, choice)
    response_format = body.response_format
    structured = isinstance(response_format, JsonObjectFormat | JsonSchemaFormat)
    if structured and callable_tools:
        raise invalid_request(
            "response_format json_object/json_schema cannot be combined with tools "
            "unless tool_choice is 'none'.",
            param="response_format",
        )
    additions = [block] if (block := tool_calls.tool_instructions(tools, choice)) else []
    tokenizer = generator.tokenizer
    constraint: GrammarConstraint | None = None
    if tool_calls.call_is_enforced(choice):
        mode: ChatOutputMode = "enforced_call"
        constraint = tool_calls.enforced_call_constraint(tokenizer, tools, callable_tools, "chat")
    else:
        mode = "auto_tools" if callable_tools else "text"
        if isinstance(response_format, JsonSchemaFormat):
            schema = response_format.json_schema.json_schema or {"type": "object"}
            try:
                constraint = json_schema_constraint(
                    tokenizer, schema, what="response_format.json_schema.schema"
                )
            except GrammarCompileError as error:
                raise invalid_request(str(error), param="response_format.json_schema.schema") from None
            additions.append(
                "Answer only with a JSON value that matches this JSON schema: " + compact_json(schema)
            )
        elif isinstance(response_format, JsonObjectFormat):
            constraint = json_object_constraint(tokenizer)
            additions.append("Answer only with a JSON object.")
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


def _message_tool_calls(
    calls: list[tool_calls.ParsedToolCall],
) -> list[ChatCompletionMessageFunctionToolCall]:
    return [
        ChatCompletionMessageFunctionToolCall(
            id=tool_calls.new_call_id(),
            type="function",
            function=Function(name=call.name, arguments=call.arguments),
        )
        for call in calls
    ]


def chat_message(
    text: str, reason: FinishReason, plan: ChatOutputPlan, *, starts_in_reasoning: bool = False
) -> tuple[ChatCompletionMessage, ChatFinishReason]:
    """The assistant message and finish_reason for a whole (non-streamed) answer."""
    finish: ChatFinishReason = "length" if reason == "length" else "stop"
    if plan.mode == "enforced_call":
        call = tool_calls.parse_enforced_call(text)
        if call is not None:
            message = ChatCompletionMessage(
                role="assistant", content=None, refusal=None, tool_calls=_message_tool_calls([call])
            )
            return message, "tool_calls"
        return ChatCompletionMessage(role="assistant", content=text, refusal=None), finish
    split = split_reasoning(text, starts_in_reasoning=starts_in_reasoning)
    extra: dict[str, Any] = {"reasoning_content": split.reasoning} if split.reasoning else {}
    if plan.mode == "auto_tools":
        calls = tool_calls.parse_tool_calls(
            split.answer, plan.callable_tools, parallel=plan.parallel_tool_calls
        )
        if calls:
            message = ChatCompletionMessage(
                role="assistant", content=None, refusal=None, tool_calls=_message_tool_calls(calls), **extra
            )
            return message, "tool_calls"
    return ChatCompletionMessage(role="assistant", content=split.answer, refusal=None, **extra), finish


class ChatDeltaInterpreter:
    """Turns a stream of generated text into chat chunk deltas (one interpreter per stream)."""

    def __init__(self, plan: ChatOutputPlan, *, starts_in_reasoning: bool = False) -> None:
        self.plan = plan
        self.splitter = ReasoningSplitter(starts_in_reasoning=starts_in_reasoning)
        self.call_reader = tool_calls.EnforcedCallReader()
        self.call_announced = False
        self.buffered_answer = ""
        self.raw_text = ""

    def feed(self, text: str) -> list[ChoiceDelta]:
        self.raw_text += text
        if self.plan.mode == "enforced_call":
            return self._enforced(self.call_reader.feed(text))
        return self._split(self.splitter.feed(text))

    def finish(self, reason: FinishReason) -> tuple[list[ChoiceDelta], ChatFinishReason]:
        """The last deltas and the finish_reason to send with the final chunk."""
        finish: ChatFinishReason = "length" if reason == "length" else "stop"
        if self.plan.mode == "enforced_call":
            complete = tool_calls.parse_enforced_call(self.raw_text) is not None
            if self.call_reader.name is None:
                return ([ChoiceDelta(content=self.raw_text)] if self.raw_text else []), finish
            deltas = self._enforced(self.call_reader.finish(complete=complete))
            return deltas, "tool_calls" if complete else finish
        deltas = self._split(self.splitter.finish())
        if self.plan.mode == "auto_tools":
            calls = tool_calls.parse_tool_calls(
                self.buffered_answer, self.plan.callable_tools, parallel=self.plan.parallel_tool_calls
            )
            if calls:
                deltas.append(ChoiceDelta(tool_calls=_delta_calls(calls)))
                return deltas, "tool_calls"
            if self.buffered_answer:
                deltas.append(ChoiceDelta(content=self.buffered_answer))
        return deltas, finish

    def _split(self, events: list[SplitEvent]) -> list[ChoiceDelta]:
        deltas: list[ChoiceDelta] = []
        for event in events:
            if isinstance(event, ReasoningDelta):
                deltas.append(ChoiceDelta(reasoning_content=event.text))  # type: ignore[call-arg]
            elif isinstance(event, AnswerDelta):
                if self.plan.mode == "auto_tools":
                    self.buffered_answer += event.text
                else:
                    deltas.append(ChoiceDelta(content=event.text))
        return deltas

    def _enforced(self, arguments: str) -> list[ChoiceDelta]:
        deltas: list[ChoiceDelta] = []
        if not self.call_announced and self.call_reader.name is not None:
            self.call_announced = True
            deltas.append(
                ChoiceDelta(
                    tool_calls=[
                        ChoiceDeltaToolCall(
                            index=0,
                            id=tool_calls.new_call_id(),
                            type="function",
                            function=ChoiceDeltaToolCallFunction(name=self.call_reader.name, arguments=""),
                        )
                    ]
                )
            )
        if arguments and self.call_announced:
            deltas.append(
                ChoiceDelta(
                    tool_calls=[
                        ChoiceDeltaToolCall(
                            index=0, function=ChoiceDeltaToolCallFunction(arguments=arguments)
                        )
                    ]
                )
            )
        return deltas


def _delta_calls(calls: list[tool_calls.ParsedToolCall]) -> list[ChoiceDeltaToolCall]:
    return [
        ChoiceDeltaToolCall(
            index=index,
            id=tool_calls.new_call_id(),
            type="function",
            function=ChoiceDeltaToolCallFunction(name=call.name, arguments=call.arguments),
        )
        for index, call in enumerate(calls)
    ]
