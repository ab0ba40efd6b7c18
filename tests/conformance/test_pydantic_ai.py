"""pydantic-ai against a real node: an Agent with a tool and a typed result, over chat and over Responses.

Both of pydantic-ai's OpenAI model classes (``OpenAIChatModel`` on
``/v1/chat/completions``, ``OpenAIResponsesModel`` on ``/v1/responses``) run
the same agent. The tool choice is forced per step (the tool first, then the
output tool) so the small default model cannot skip the tool: what is checked
is the protocol (the tool ran with arguments that validate against its
signature, the typed result validates, the message history has the expected
shape), not the wisdom of the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field
from pydantic_ai import Agent, RunContext
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.messages import ModelRequest, ModelResponse, ToolCallPart, ToolReturnPart
from pydantic_ai.models import Model
from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.settings import ModelSettings

from support.node_process import DEFAULT_MODEL, NodeProcess

pytestmark = pytest.mark.slow

OUTPUT_TOOL = "final_result"


class Forecast(BaseModel):
    """The typed result the agent must return."""

    city: str = Field(max_length=12)
    degrees_celsius: int = Field(ge=-80, le=60)


@dataclass(init=False)
class ToolThenResult(AbstractCapability[None]):
    """Forces ``get_temperature`` until it has run once, then the output tool."""

    def get_model_settings(self) -> Any:
        def settings(ctx: RunContext[None]) -> ModelSettings:
            called = any(
                isinstance(part, ToolReturnPart) and part.tool_name == "get_temperature"
                for message in ctx.messages
                if isinstance(message, ModelRequest)
                for part in message.parts
            )
            return ModelSettings(tool_choice=[OUTPUT_TOOL] if called else ["get_temperature"])

        return settings


def weather_agent(model: Model, calls: list[str]) -> Agent[None, Forecast]:
    agent = Agent(
        model,
        output_type=Forecast,
        instructions="Look up the temperature with the tool, then report it.",
        capabilities=[ToolThenResult()],
        model_settings=ModelSettings(max_tokens=48, temperature=0.0),
    )

    @agent.tool_plain
    def get_temperature(city: Annotated[str, Field(max_length=12)]) -> int:
        """The current temperature in a city, in degrees Celsius."""
        calls.append(city)
        return 21

    return agent


@pytest.mark.parametrize("model_class", [OpenAIChatModel, OpenAIResponsesModel])
def test_agent_calls_the_tool_and_returns_a_typed_result(
    api_node: NodeProcess, model_class: type[OpenAIChatModel] | type[OpenAIResponsesModel]
) -> None:
    provider = OpenAIProvider(base_url=api_node.base_url, api_key=api_node.api_keys[0])
    calls: list[str] = []
    result = weather_agent(model_class(DEFAULT_MODEL, provider=provider), calls).run_sync(
        "What is the temperature in Oslo?"
    )
    assert isinstance(result.output, Forecast)
    Forecast.model_validate(result.output.model_dump())
    assert len(calls) == 1 and isinstance(calls[0], str)
    tool_calls = [
        part
        for message in result.all_messages()
        if isinstance(message, ModelResponse)
        for part in message.parts
        if isinstance(part, ToolCallPart)
    ]
    assert [part.tool_name for part in tool_calls] == ["get_temperature", OUTPUT_TOOL]
    assert set(tool_calls[0].args_as_dict()) == {"city"}
    assert result.usage.requests == 2 and result.usage.input_tokens > 0
