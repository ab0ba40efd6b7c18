"""Tool definitions, tool_choice, the tolerant call parser and the enforced-call argument streamer."""

from __future__ import annotations

import json

import pytest

from language_pipes.api.errors import APIError
from language_pipes.api.tool_calls import (
    EnforcedCallReader,
    ForcedTool,
    FunctionTool,
    ParsedToolCall,
    parse_enforced_call,
    parse_tool_calls,
    tool_instructions,
    validate_tool_choice,
    validate_tools,
)

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Get weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TOOLS = [FunctionTool("get_weather", parameters=WEATHER["parameters"]), FunctionTool("add")]


def error_of(call) -> APIError:  # type: ignore[no-untyped-def]
    with pytest.raises(APIError) as raised:
        call()
    assert raised.value.status == 400
    return raised.value


@pytest.mark.parametrize("hosted", ["web_search", "file_search", "computer_use", "code_interpreter", "mcp"])
def test_hosted_tools_are_rejected_by_name(hosted: str) -> None:
    error = error_of(lambda: validate_tools([WEATHER, {"type": hosted}], "responses"))
    assert hosted in error.message and error.param == "tools[1].type"


def test_tool_definitions_are_checked() -> None:
    assert validate_tools([WEATHER], "responses")[0].name == "get_weather"
    chat_tool = {"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}
    assert validate_tools([chat_tool], "chat")[0].parameters == WEATHER["parameters"]
    assert error_of(lambda: validate_tools([{"type": "function"}], "responses")).param == "tools[0].name"
    bad_name = {**WEATHER, "name": "get weather!"}
    assert error_of(lambda: validate_tools([bad_name], "responses")).param == "tools[0].name"
    bad_params = {**WEATHER, "parameters": {"type": "string"}}
    assert error_of(lambda: validate_tools([bad_params], "responses")).param == "tools[0].parameters"
    assert "twice" in error_of(lambda: validate_tools([WEATHER, WEATHER], "responses")).message
    unknown = {**WEATHER, "colour": "red"}
    assert "colour" in error_of(lambda: validate_tools([unknown], "responses")).message


def test_tool_choice() -> None:
    assert validate_tool_choice(None, TOOLS, "responses") == "auto"
    assert validate_tool_choice(None, [], "responses") == "none"
    assert validate_tool_choice("required", TOOLS, "responses") == "required"
    named = {"type": "function", "name": "add"}
    assert validate_tool_choice(named, TOOLS, "responses") == ForcedTool("add")
    chat_named = {"type": "function", "function": {"name": "add"}}
    assert validate_tool_choice(chat_named, TOOLS, "chat") == ForcedTool("add")
    assert error_of(lambda: validate_tool_choice("required", [], "responses")).param == "tool_choice"
    missing = {"type": "function", "name": "nope"}
    assert "nope" in error_of(lambda: validate_tool_choice(missing, TOOLS, "responses")).message
    assert "web_search" in error_of(lambda: validate_tool_choice({"type": "web_search"}, TOOLS, "x")).message


def test_instruction_block() -> None:
    block = tool_instructions(TOOLS, "auto")
    assert block is not None and "get_weather" in block and '"city"' in block and "plain text" in block
    assert tool_instructions(TOOLS, "none") is None
    forced = tool_instructions(TOOLS, ForcedTool("add"))
    assert forced is not None and "get_weather" not in forced and "must call the tool 'add'" in forced


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "get_weather", "arguments": {"city": "Chicago"}}',
        '<think>The user wants weather. {"not": "a call"}</think>\n'
        '{"name": "get_weather", "arguments": {"city": "Chicago"}}',
        'Sure! I will check.\n```json\n{"name": "get_weather", "arguments": {"city": "Chicago"}}\n```\nDone.',
        '<tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Chicago\\"}"}\n</tool_call>',
        '{"type": "function", "function": {"name": "get_weather", "parameters": {"city": "Chicago"}}}',
        '[{"name": "get_weather", "arguments": {"city": "Chicago"}}]',
    ],
)
def test_tolerant_parse(text: str) -> None:
    assert parse_tool_calls(text, TOOLS) == [ParsedToolCall("get_weather", '{"city": "Chicago"}')]


@pytest.mark.parametrize(
    "text",
    [
        "The weather in Chicago is sunny.",
        '{"name": "get_weather", "arguments": {"city": "Chicago"',  # truncated
        '{"name": "launch_rockets", "arguments": {}}',  # unknown tool
        '{"name": "get_weather", "arguments": "not json"}',
        '{"name": "get_weather", "arguments": [1, 2]}',
        '<think>I could call {"name": "get_weather", "arguments": {}}</think> It is sunny.',
    ],
)
def test_malformed_or_absent_calls_are_text(text: str) -> None:
    assert parse_tool_calls(text, TOOLS) == []


def test_parallel_calls() -> None:
    text = '{"name": "add", "arguments": {"a": 1}}\n{"name": "get_weather", "arguments": {"city": "Oslo"}}'
    assert [call.name for call in parse_tool_calls(text, TOOLS)] == ["add", "get_weather"]
    assert [call.name for call in parse_tool_calls(text, TOOLS, parallel=False)] == ["add"]


def test_enforced_reader_streams_arguments_exactly() -> None:
    text = '{"name": "get_weather", "arguments": {"city": "Chicago", "days": [1, 2]}}'
    for step in (1, 2, 3, 7):
        reader = EnforcedCallReader()
        streamed = ""
        name_seen_at = None
        for start in range(0, len(text), step):
            streamed += reader.feed(text[start : start + step])
            if reader.name and name_seen_at is None:
                name_seen_at = start
        streamed += reader.finish(complete=True)
        assert reader.name == "get_weather"
        assert streamed == reader.arguments == '{"city": "Chicago", "days": [1, 2]}'
        assert json.loads(streamed) == {"city": "Chicago", "days": [1, 2]}
        assert name_seen_at is not None and name_seen_at < text.index('{"city')
    parsed = parse_enforced_call(text)
    assert parsed is not None and parsed.name == "get_weather"


def test_enforced_reader_cut_off() -> None:
    reader = EnforcedCallReader()
    streamed = reader.feed('{"name": "add", "arguments": {"a": 1')
    streamed += reader.finish(complete=False)
    assert streamed == '{"a": 1'
    assert parse_enforced_call('{"name": "add", "arguments": {"a": 1') is None
