"""The tool-call conversations and the output schema the chat and Responses API tests share.

A question, the assistant's earlier ``get_weather`` call ``call_abc`` and the
tool's result, written in each API's own form, and the ``person`` schema the
structured-output tests ask for.
"""

from __future__ import annotations

from typing import Any

WEATHER_QUESTION = "What is the weather in Chicago?"
CALL_ID = "call_abc"
CALL_ARGUMENTS = '{"city": "Chicago"}'
TOOL_RESULT = '{"temperature": 72}'

PERSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


def chat_tool_round_trip() -> list[Any]:
    """Chat messages: the question, the assistant's call, the tool's result."""
    return [
        {"role": "user", "content": WEATHER_QUESTION},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": CALL_ID,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": CALL_ARGUMENTS},
                }
            ],
        },
        {"role": "tool", "tool_call_id": CALL_ID, "content": TOOL_RESULT},
    ]


def responses_tool_round_trip() -> list[Any]:
    """Responses input items: the question, the function_call, its function_call_output."""
    return [
        {"role": "user", "content": WEATHER_QUESTION},
        {"type": "function_call", "call_id": CALL_ID, "name": "get_weather", "arguments": CALL_ARGUMENTS},
        {"type": "function_call_output", "call_id": CALL_ID, "output": TOOL_RESULT},
    ]
