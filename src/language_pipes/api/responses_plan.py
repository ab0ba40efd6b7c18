"""What a Responses request becomes before generation: its conversation and its :class:`ResponsePlan`.

A request becomes chat turns (``instructions``, the tool block and a format
hint as the system message; input items as turns, earlier turns from
``previous_response_id``); :mod:`language_pipes.api.responses` decides the
rest of the plan (output mode, constraint, engine request).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from language_pipes.api import tool_calls
from language_pipes.api.output import OutputReading
from language_pipes.api.response_store import ConversationMessage, StoredResponse
from language_pipes.api.responses_schemas import (
    FunctionCallItem,
    FunctionCallOutputItem,
    MessageItem,
    ResponsesRequest,
    content_text,
)
from language_pipes.engine.types import GenerationRequest

# ---------------------------------------------------------------- request -> conversation


@dataclass
class Conversation:
    """Chat turns for the template, and the call_id -> tool name map of the calls in them."""

    messages: list[ConversationMessage] = field(default_factory=list)
    call_names: dict[str, str] = field(default_factory=dict)

    def add(self, role: str, content: str) -> None:
        if self.messages and self.messages[-1]["role"] == role and role != "system":
            # Consecutive turns of one role (several tool results, say) become one: many chat
            # templates insist on alternating roles.
            self.messages[-1] = {"role": role, "content": self.messages[-1]["content"] + "\n\n" + content}
        else:
            self.messages.append({"role": role, "content": content})


def conversation_from_input(body: ResponsesRequest, previous: StoredResponse | None) -> Conversation:
    conversation = Conversation()
    if previous is not None:
        conversation.messages = [dict(message) for message in previous.conversation]
        conversation.call_names = dict(previous.call_names)
    pending_calls: list[tool_calls.ParsedToolCall] = []

    def flush_calls() -> None:
        if pending_calls:
            conversation.add("assistant", tool_calls.render_tool_calls_text(pending_calls))
            pending_calls.clear()

    for item in body.input_items():
        if isinstance(item, FunctionCallItem):
            conversation.call_names[item.call_id] = item.name
            pending_calls.append(tool_calls.ParsedToolCall(name=item.name, arguments=item.arguments))
            continue
        flush_calls()
        if isinstance(item, FunctionCallOutputItem):
            name = conversation.call_names.get(item.call_id)
            text = tool_calls.render_tool_result_text(name, item.call_id, content_text(item.output))
            conversation.add("user", text)
        elif isinstance(item, MessageItem):
            role = "system" if item.role == "developer" else item.role
            conversation.add(role, content_text(item.content))
        # Reasoning items from an earlier output are accepted and not shown to the model again.
    flush_calls()
    return conversation


def template_messages(
    body: ResponsesRequest, conversation: Conversation, tool_block: str | None
) -> list[dict[str, object]]:
    """System message first (instructions, tool block, format hint, input system turns), then the turns."""
    structured = body.structured_output()
    format_hint = structured.hint() if structured is not None else None
    system_parts = [part for part in (body.instructions, tool_block, format_hint) if part]
    turns = list(conversation.messages)
    while turns and turns[0]["role"] == "system":
        system_parts.append(turns.pop(0)["content"])
    messages: list[dict[str, object]] = []
    if system_parts:
        messages.append({"role": "system", "content": "\n\n".join(system_parts)})
    messages.extend(dict(turn) for turn in turns)
    return messages


@dataclass
class ResponsePlan:
    """Everything decided before generation starts."""

    body: ResponsesRequest
    tools: list[tool_calls.FunctionTool]
    tool_choice: tool_calls.ToolChoice
    reading: OutputReading
    conversation: Conversation
    generation: GenerationRequest
    previous: StoredResponse | None
