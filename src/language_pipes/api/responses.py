"""``POST /v1/responses``: the OpenAI Responses API on top of the generation engine.

A request becomes a chat conversation (``instructions``, the tool block and a
format hint as the system message; input items as turns, earlier turns from
``previous_response_id``), optionally a token constraint (structured output,
or an enforced tool call), an engine request and an
:class:`~language_pipes.api.output.OutputReading` (the output modes are
described in :mod:`language_pipes.api.output`). From there it takes the
pipeline shared with chat (:mod:`language_pipes.api.generation`); the output
items are rendered by :mod:`language_pipes.api.responses_output` through a
:class:`~language_pipes.api.responses_stream.ResponseBuilder`, whose final
snapshot is the non-streamed answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request
from openai.types.responses import ResponseFunctionToolCall
from starlette.responses import JSONResponse, Response

from language_pipes.api import tool_calls
from language_pipes.api.auth import AuthenticatedClient, ClientKey, job_limiter
from language_pipes.api.body import read_body
from language_pipes.api.errors import invalid_request
from language_pipes.api.generation import run_generation, start_streamed_generation, stream_frames
from language_pipes.api.models_route import completion_token_budget, generator_for
from language_pipes.api.output import OutputInterpreter, OutputMode, OutputReading, output_mode
from language_pipes.api.prompt import encode_prompt, prompt_opens_reasoning
from language_pipes.api.response_store import ResponseId, StoredResponse, response_store
from language_pipes.api.responses_output import ResponsesStreamRenderer, builder_events
from language_pipes.api.responses_plan import (
    Conversation,
    ResponsePlan,
    conversation_from_input,
    template_messages,
)
from language_pipes.api.responses_schemas import (
    ResponsesRequest,
    TextFormatJsonSchema,
)
from language_pipes.api.responses_settings import ResponseSettings
from language_pipes.api.responses_stream import ResponseBuilder
from language_pipes.api.settings import api_settings
from language_pipes.api.sse import EventStreamResponse
from language_pipes.engine.constraints import (
    GrammarConstraint,
)
from language_pipes.engine.types import GenerationRequest, TextGenerator

logger = logging.getLogger(__name__)

router = APIRouter()

# ---------------------------------------------------------------- validation and planning


def check_request_options(body: ResponsesRequest) -> None:
    alias = body.conflicting_token_limit()
    if alias is not None:
        raise invalid_request(
            "max_output_tokens, max_completion_tokens and max_tokens were given with different values.",
            param=alias,
        )
    if body.background:
        raise invalid_request(
            "background responses are not supported: this node answers each request while it is open.",
            param="background",
        )
    if body.reasoning is not None and body.reasoning.effort is not None:
        raise invalid_request(
            "reasoning.effort is not supported: the model's reasoning cannot be steered.", param="reasoning"
        )
    if body.top_logprobs:
        raise invalid_request(
            "top_logprobs is not supported (logprobs are not supported).", param="top_logprobs"
        )
    output_format = body.output_format()
    structured = output_format is not None and output_format.type != "text"
    if structured and body.tools and body.tool_choice != "none":
        raise invalid_request(
            "text.format json_object/json_schema cannot be combined with tools unless tool_choice is 'none'.",
            param="text.format",
        )


def _build_constraint(
    generator: TextGenerator,
    body: ResponsesRequest,
    mode: OutputMode,
    all_tools: Sequence[tool_calls.FunctionTool],
    callable_tools: Sequence[tool_calls.FunctionTool],
) -> GrammarConstraint | None:
    """Compile the token constraint (runs in a worker thread: compiling can take a moment)."""
    if mode == "enforced_call":
        return tool_calls.enforced_call_constraint(
            generator.tokenizer, all_tools, callable_tools, "responses"
        )
    structured = body.structured_output()
    return structured.constraint(generator.tokenizer) if structured is not None else None


def _previous_response(request: Request, body: ResponsesRequest, client: ClientKey) -> StoredResponse | None:
    if body.previous_response_id is None:
        return None
    # Another key's response is answered exactly like one that was never stored.
    previous = response_store(request).get(body.previous_response_id, owner=client)
    if previous is None:
        raise invalid_request(
            f"Previous response with id '{body.previous_response_id}' not found "
            "(it was never stored, or it expired from this node's store).",
            param="previous_response_id",
            code="previous_response_not_found",
        )
    return previous


async def plan_response(
    request: Request, body: ResponsesRequest, generator: TextGenerator, client: ClientKey
) -> ResponsePlan:
    check_request_options(body)
    tools = tool_calls.validate_tools(body.tools, "responses")
    choice = tool_calls.validate_tool_choice(body.tool_choice, tools, "responses")
    callable_tools = tool_calls.tools_for_choice(tools, choice)
    mode = output_mode(choice, callable_tools)
    previous = _previous_response(request, body, client)
    conversation = conversation_from_input(body, previous)
    messages = template_messages(body, conversation, tool_calls.tool_instructions(tools, choice))
    prompt = await encode_prompt(
        generator, messages, max_chars=api_settings(request).max_prompt_chars, param="input"
    )
    budget = completion_token_budget(generator, len(prompt), body.requested_max_tokens(), param="input")
    constraint = await asyncio.to_thread(_build_constraint, generator, body, mode, tools, callable_tools)
    reading = OutputReading(
        mode=mode,
        callable_tools=callable_tools,
        parallel_tool_calls=body.parallel_tool_calls is not False,
        max_tool_calls=body.max_tool_calls,
        starts_in_reasoning=constraint is None and prompt_opens_reasoning(generator, prompt),
    )
    return ResponsePlan(
        body=body,
        tools=tools,
        tool_choice=choice,
        reading=reading,
        conversation=conversation,
        generation=GenerationRequest(
            prompt_token_ids=prompt,
            sampling=body.sampling_params(),
            max_new_tokens=budget,
            constraint=constraint,
        ),
        previous=previous,
    )


def response_settings(plan: ResponsePlan) -> ResponseSettings:
    body = plan.body
    sampling = plan.generation.sampling
    return ResponseSettings(
        model=body.model,
        instructions=body.instructions,
        tools=plan.tools,
        tool_choice=plan.tool_choice,
        parallel_tool_calls=body.parallel_tool_calls is not False,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        presence_penalty=sampling.presence_penalty,
        frequency_penalty=sampling.frequency_penalty,
        max_output_tokens=body.requested_max_tokens(),
        max_tool_calls=body.max_tool_calls,
        previous_response_id=body.previous_response_id,
        metadata=body.metadata,
        text_format=_echoed_format(body),
        store=body.store is not False,
        safety_identifier=body.safety_identifier,
        prompt_cache_key=body.prompt_cache_key,
        user=body.user,
        reasoning_summary=body.reasoning_summary(),
    )


def _echoed_format(body: ResponsesRequest) -> dict[str, Any] | None:
    """``text.format`` as the response echoes it: a json_schema format with ``description`` and ``strict``.

    Both are always present (``None`` / ``False``, OpenAI's defaults, when not sent), as the Open
    Responses schema requires the keys.
    """
    output_format = body.output_format()
    if output_format is None:
        return None
    echoed = output_format.model_dump(by_alias=True, exclude_none=True)
    if isinstance(output_format, TextFormatJsonSchema):
        echoed["description"] = output_format.description
        echoed["strict"] = bool(output_format.strict)
    return echoed


# ---------------------------------------------------------------- store


def remember(request: Request, plan: ResponsePlan, builder: ResponseBuilder, client: ClientKey) -> None:
    """Keep the conversation plus this answer for a later ``previous_response_id``."""
    if plan.body.store is False or builder.status == "failed":
        return
    conversation = Conversation(list(plan.conversation.messages), dict(plan.conversation.call_names))
    calls: list[tool_calls.ParsedToolCall] = []
    for item in builder.output:
        if isinstance(item, ResponseFunctionToolCall):
            conversation.call_names[item.call_id] = item.name
            calls.append(tool_calls.ParsedToolCall(item.name, item.arguments))
    if calls:
        conversation.add("assistant", tool_calls.render_tool_calls_text(calls))
    elif builder.output_text:
        conversation.add("assistant", builder.output_text)
    response_store(request).put(
        StoredResponse(
            response_id=ResponseId(builder.response_id),
            model=plan.body.model,
            conversation=tuple(conversation.messages),
            call_names=tuple(conversation.call_names.items()),
            owner=client,
        )
    )


# ---------------------------------------------------------------- endpoint


@router.post("/v1/responses", response_model=None)
async def create_response(request: Request, client: AuthenticatedClient) -> Response:
    # The slot is taken first: decoding, planning and tokenizing are the expensive part of a request.
    slot = job_limiter(request).acquire(client)
    try:
        body = await read_body(request, ResponsesRequest)
        generator = generator_for(request, body.model)
        plan = await plan_response(request, body, generator, client)
    except BaseException:
        slot.release()
        raise
    builder = ResponseBuilder(response_settings(plan))
    interpreter = OutputInterpreter(plan.reading)
    if body.stream:
        started = await start_streamed_generation(request, generator, plan.generation, slot)
        renderer = ResponsesStreamRenderer(builder, lambda: remember(request, plan, builder, client))
        heartbeat = api_settings(request).stream_heartbeat_seconds
        return EventStreamResponse(
            stream_frames(started, interpreter, renderer, heartbeat), on_close=started.close
        )
    builder.start()
    with slot:
        items = await run_generation(request, generator, plan.generation, interpreter)
    builder_events(builder, items)
    remember(request, plan, builder, client)
    return JSONResponse(builder.body())
