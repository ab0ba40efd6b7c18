"""The chat-completions side of tools, response_format and reasoning_content."""

from __future__ import annotations

import json
from typing import Any

import pytest

from language_pipes.api import chat_render
from language_pipes.api.chat_tools import ChatOutputPlan, chat_template_messages, plan_chat_output
from language_pipes.api.errors import APIError
from language_pipes.api.output import OutputInterpreter
from language_pipes.api.schemas import ChatCompletionRequest
from language_pipes.engine.constraints import GrammarConstraint
from language_pipes.engine.types import Finished, FinishReason, TextDelta

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL_TEXT = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'


class ChatDeltaInterpreter:
    """Generated text in, chat deltas out: the shared output interpreter with the chat rendering."""

    def __init__(self, plan: ChatOutputPlan) -> None:
        self.output = OutputInterpreter(plan.reading(starts_in_reasoning=False))

    def feed(self, text: str) -> list[Any]:
        return chat_render.chat_deltas(self.output.feed(TextDelta(text, ())))

    def finish(self, reason: FinishReason) -> tuple[list[Any], str]:
        items = self.output.finish(Finished(reason, prompt_tokens=0, completion_tokens=0))
        return chat_render.chat_deltas(items), chat_render.finish_reason(items[-1])  # type: ignore[arg-type]


def chat_message(text: str, reason: FinishReason, plan: ChatOutputPlan) -> tuple[Any, str]:
    """The whole answer: the streamed items collected."""
    output = OutputInterpreter(plan.reading(starts_in_reasoning=False))
    items = output.feed(TextDelta(text, ())) + output.finish(Finished(reason, 0, 0))
    return chat_render.chat_message(items)


class TokenizerOnly:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer


@pytest.fixture(scope="module")
def generator(default_tokenizer: Any) -> TokenizerOnly:
    return TokenizerOnly(default_tokenizer)


def request(**fields: Any) -> ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "Weather in Oslo?"}], **fields}
    return ChatCompletionRequest.model_validate(body)


def test_required_streams_index_id_type_name_then_arguments(generator: TokenizerOnly) -> None:
    plan = plan_chat_output(request(tools=[WEATHER], tool_choice="required"), generator)  # type: ignore[arg-type]
    assert plan.mode == "enforced_call" and isinstance(plan.constraint, GrammarConstraint)
    interpreter = ChatDeltaInterpreter(plan)
    deltas = []
    for start in range(0, len(CALL_TEXT), 3):
        deltas += interpreter.feed(CALL_TEXT[start : start + 3])
    last, reason = interpreter.finish("stop")
    deltas += last
    calls = [call for delta in deltas for call in (delta.tool_calls or [])]
    assert reason == "tool_calls" and all(call.index == 0 for call in calls)
    first = calls[0]
    assert first.id and first.type == "function" and first.function and first.function.name == "get_weather"
    arguments = "".join(call.function.arguments or "" for call in calls if call.function)
    assert json.loads(arguments) == {"city": "Oslo"}
    message, finish = chat_message(CALL_TEXT, "stop", plan)
    assert finish == "tool_calls" and message.content is None and message.tool_calls
    assert message.tool_calls[0].function.name == "get_weather"  # type: ignore[union-attr]


def test_auto_parses_and_reasoning_content(generator: TokenizerOnly) -> None:
    plan = plan_chat_output(request(tools=[WEATHER]), generator)  # type: ignore[arg-type]
    assert plan.mode == "auto_tools" and plan.constraint is None
    message, finish = chat_message("<think>Need weather.</think>\n" + CALL_TEXT, "stop", plan)
    assert finish == "tool_calls" and message.model_extra == {"reasoning_content": "Need weather."}
    text_plan = plan_chat_output(request(), generator)  # type: ignore[arg-type]
    interpreter = ChatDeltaInterpreter(text_plan)
    deltas = (
        interpreter.feed("<think>Hm") + interpreter.feed("m.</think>Hi") + interpreter.finish("length")[0]
    )
    reasoning = "".join((delta.model_extra or {}).get("reasoning_content", "") for delta in deltas)
    assert reasoning == "Hmm." and "".join(delta.content or "" for delta in deltas) == "Hi"


def test_tool_messages_and_response_format(generator: TokenizerOnly) -> None:
    body = request(
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "72F"},
        ],
        tools=[WEATHER],
    )
    plan = plan_chat_output(body, generator)  # type: ignore[arg-type]
    messages = chat_template_messages(body, plan)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert str(messages[0]["content"]).startswith("Be brief.") and "get_weather" in str(
        messages[0]["content"]
    )
    assert "72F" in str(messages[3]["content"]) and "get_weather" in str(messages[3]["content"])
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    formatted = request(
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    )
    assert isinstance(plan_chat_output(formatted, generator).constraint, GrammarConstraint)  # type: ignore[arg-type]
    with pytest.raises(APIError) as raised:
        plan_chat_output(request(tools=[{"type": "function", "function": {"name": "bad name"}}]), generator)  # type: ignore[arg-type]
    assert raised.value.param == "tools[0].function.name"
