"""``POST /v1/responses``: the OpenAI Responses API on top of the generation engine.

A request becomes a chat conversation (``instructions``, the tool block and a
format hint as the system message; input items as turns, earlier turns from
``previous_response_id``), optionally a token constraint (structured output,
or an enforced tool call), and an engine request. What the model produces is
interpreted by an :class:`~language_pipes.api.responses_output.OutputComposer` into output items through the
:class:`~language_pipes.api.responses_stream.ResponseBuilder`, which yields
the typed stream events; the non-streamed answer is that builder's final
snapshot.

How output is streamed depends on what it can be:

* plain text: reasoning streams live on a ``reasoning`` item, then the answer
  on a ``message`` item;
* ``tool_choice`` ``auto``: reasoning streams live; the answer is buffered
  until the end, then becomes ``function_call`` items or a message;
* ``required`` / a named tool: the constraint guarantees a call, so the
  ``function_call`` item opens as soon as the tool's name is generated and its
  arguments stream as they are produced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import APIRouter, Request
from openai.types.responses import ResponseFunctionToolCall
from starlette.responses import JSONResponse, Response

from language_pipes.api import tool_calls
from language_pipes.api.auth import AuthenticatedClient, ClientKey, JobSlot, job_limiter
from language_pipes.api.body import read_body
from language_pipes.api.errors import (
    current_request_id,
    finished_with_error,
    generation_failed,
    invalid_request,
)
from language_pipes.api.generation import GenerationEndedEarly, StartedGeneration, start_streamed_generation
from language_pipes.api.models_route import completion_token_budget, generator_for
from language_pipes.api.prompt import encode_prompt
from language_pipes.api.reasoning import (
    prompt_opens_reasoning,
)
from language_pipes.api.response_store import (
    ResponseId,
    StoredResponse,
    response_store,
)
from language_pipes.api.responses_output import OutputComposer
from language_pipes.api.responses_plan import (
    Conversation,
    OutputMode,
    ResponsePlan,
    conversation_from_input,
    template_messages,
)
from language_pipes.api.responses_schemas import (
    ResponsesRequest,
    TextFormatJsonObject,
    TextFormatJsonSchema,
)
from language_pipes.api.responses_settings import ResponseSettings
from language_pipes.api.responses_stream import ResponseBuilder, event_frame
from language_pipes.api.settings import api_settings
from language_pipes.api.sse import SSE_DONE, EventStreamResponse, cancel_on_disconnect
from language_pipes.engine.constraints import (
    GrammarCompileError,
    GrammarConstraint,
    json_object_constraint,
    json_schema_constraint,
)
from language_pipes.engine.types import (
    Finished,
    GenerationEvent,
    GenerationRequest,
    TextDelta,
    TextGenerator,
)

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
    tokenizer = generator.tokenizer
    if mode == "enforced_call":
        return tool_calls.enforced_call_constraint(tokenizer, all_tools, callable_tools, "responses")
    output_format = body.output_format()
    if isinstance(output_format, TextFormatJsonSchema):
        try:
            return json_schema_constraint(tokenizer, output_format.json_schema, what="text.format.schema")
        except GrammarCompileError as error:
            raise invalid_request(str(error), param="text.format.schema") from None
    if isinstance(output_format, TextFormatJsonObject):
        return json_object_constraint(tokenizer)
    return None


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
    if tool_calls.call_is_enforced(choice):
        mode: OutputMode = "enforced_call"
    elif callable_tools:
        mode = "auto_tools"
    else:
        mode = "text"
    previous = _previous_response(request, body, client)
    conversation = conversation_from_input(body, previous)
    messages = template_messages(body, conversation, tool_calls.tool_instructions(tools, choice))
    prompt = await encode_prompt(
        generator, messages, max_chars=api_settings(request).max_prompt_chars, param="input"
    )
    budget = completion_token_budget(generator, len(prompt), body.requested_max_tokens(), param="input")
    constraint = await asyncio.to_thread(_build_constraint, generator, body, mode, tools, callable_tools)
    decode = getattr(generator.tokenizer, "decode", None)
    prompt_tail = decode(prompt[-8:]) if decode is not None else ""
    return ResponsePlan(
        body=body,
        tools=tools,
        tool_choice=choice,
        mode=mode,
        conversation=conversation,
        generation=GenerationRequest(
            prompt_token_ids=prompt,
            sampling=body.sampling_params(),
            max_new_tokens=budget,
            constraint=constraint,
        ),
        starts_in_reasoning=mode != "enforced_call"
        and constraint is None
        and prompt_opens_reasoning(prompt_tail),
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


async def _next_event(events: AsyncIterator[GenerationEvent]) -> GenerationEvent | None:
    try:
        return await anext(events)
    except StopAsyncIteration:
        # The engine ended without Finished; the caller reports it as a failed response.
        return None


async def _compose_whole(generator: TextGenerator, plan: ResponsePlan, composer: OutputComposer) -> None:
    """Run a non-streamed generation through the composer; an engine failure raises its APIError."""
    events = generator.generate(plan.generation)
    try:
        async for event in events:
            if isinstance(event, TextDelta):
                composer.on_delta(event)
                continue
            if event.reason == "error":
                raise finished_with_error(event)
            composer.on_finished(event)
            return
        raise GenerationEndedEarly("the engine ended a sequence without a Finished event")
    finally:
        await events.aclose()


_HEARTBEAT = object()


async def _events_with_heartbeats(
    started: StartedGeneration, interval: float
) -> AsyncIterator[GenerationEvent | object | None]:
    """The engine's events (``None`` when it ends early), and ``_HEARTBEAT`` for each quiet ``interval``."""
    yield started.first_event
    if not isinstance(started.first_event, TextDelta):
        return
    while True:
        pending = asyncio.ensure_future(_next_event(started.rest))
        try:
            while not (await asyncio.wait({pending}, timeout=interval))[0]:
                yield _HEARTBEAT
        finally:
            if not pending.done():
                # The stream is being closed mid-wait: stop reading the engine before it is closed.
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pending
        event = pending.result()
        yield event
        if event is None or not isinstance(event, TextDelta):
            return


async def _stream_frames(
    request: Request,
    plan: ResponsePlan,
    started: StartedGeneration,
    builder: ResponseBuilder,
    client: ClientKey,
) -> AsyncIterator[str]:
    composer = OutputComposer(builder, plan)
    for event in builder.start():
        yield event_frame(event)
    current: GenerationEvent | object | None = None
    events = _events_with_heartbeats(started, api_settings(request).stream_heartbeat_seconds)
    try:
        async for current in events:
            if current is _HEARTBEAT:
                for event in builder.heartbeat():
                    yield event_frame(event)
            elif isinstance(current, TextDelta):
                for event in composer.on_delta(current):
                    yield event_frame(event)
            elif current is not None:
                assert isinstance(current, Finished)
                for event in composer.on_finished(current):
                    yield event_frame(event)
                remember(request, plan, builder, client)
        if current is None:
            for event in builder.fail(generation_failed("the engine ended without Finished").message):
                yield event_frame(event)
    except Exception:
        # The headers are sent, so a failure can only be reported in-band.
        logger.exception("request %s: generation failed during a responses stream", current_request_id())
        for event in builder.fail(generation_failed("unexpected exception during a stream").message):
            yield event_frame(event)
    finally:
        await events.aclose()
    yield SSE_DONE


async def _stream_response(
    request: Request, generator: TextGenerator, plan: ResponsePlan, slot: JobSlot, client: ClientKey
) -> Response:
    started = await start_streamed_generation(request, generator, plan.generation, slot)
    builder = ResponseBuilder(response_settings(plan))
    frames = _stream_frames(request, plan, started, builder, client)
    return EventStreamResponse(frames, on_close=started.close)


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
    if body.stream:
        return await _stream_response(request, generator, plan, slot, client)
    builder = ResponseBuilder(response_settings(plan))
    composer = OutputComposer(builder, plan)
    builder.start()
    with slot:
        await cancel_on_disconnect(request, _compose_whole(generator, plan, composer))
    remember(request, plan, builder, client)
    return JSONResponse(builder.body())
