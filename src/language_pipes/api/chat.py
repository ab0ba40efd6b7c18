"""``POST /v1/chat/completions``: validated chat body -> engine request -> JSON or SSE chunks.

Also home of the two ways of consuming the engine that every generating
endpoint shares (the Responses endpoint imports them); both raise APIError:

* :func:`run_generation` collects a whole generation, cancelling it if the
  client disconnects, and raises the right :class:`APIError` if it failed;
* :func:`start_streamed_generation` waits for the first event so that a
  failure before anything was produced still gets a proper HTTP status, then
  hands back the first event and the rest of the stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import APIRouter, Request
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta
from starlette.responses import JSONResponse, Response

from language_pipes.api import chat_tools
from language_pipes.api.auth import AuthenticatedClient, JobSlot, job_limiter
from language_pipes.api.body import read_body
from language_pipes.api.errors import (
    current_request_id,
    finished_with_error,
    generation_failed,
    invalid_request,
)
from language_pipes.api.models_route import completion_token_budget, generator_for
from language_pipes.api.prompt import encode_prompt
from language_pipes.api.reasoning import prompt_opens_reasoning
from language_pipes.api.schemas import ChatCompletionRequest
from language_pipes.api.settings import api_settings
from language_pipes.api.sse import SSE_DONE, EventStreamResponse, cancel_on_disconnect, sse_event
from language_pipes.engine.types import (
    Finished,
    GenerationEvent,
    GenerationRequest,
    TextDelta,
    TextGenerator,
)

logger = logging.getLogger(__name__)

router = APIRouter()


# --- consuming the engine (shared with the Responses endpoint) ------------------------------------


@dataclass(frozen=True)
class GenerationOutcome:
    """A whole non-streamed generation."""

    text: str
    finished: Finished


@dataclass(frozen=True)
class StartedGeneration:
    """A stream whose first event has arrived and was not an error."""

    first_event: GenerationEvent
    events: AsyncIterator[GenerationEvent]
    slot: JobSlot | None = None

    async def close(self) -> None:
        """Cancel the sequence if it is still running and free its job slot (idempotent)."""
        await _abandon(self.events, self.slot)


async def _abandon(events: AsyncIterator[GenerationEvent], slot: JobSlot | None) -> None:
    try:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
    finally:
        if slot is not None:
            slot.release()


class GenerationEndedEarly(RuntimeError):
    """The engine's stream ended without its :class:`Finished` event (an engine bug)."""


async def _collect(events: AsyncIterator[GenerationEvent]) -> GenerationOutcome:
    pieces: list[str] = []
    async for event in events:
        if isinstance(event, TextDelta):
            pieces.append(event.text)
        else:
            return GenerationOutcome("".join(pieces), event)
    raise GenerationEndedEarly("the engine ended a sequence without a Finished event")


async def _next_event(events: AsyncIterator[GenerationEvent]) -> GenerationEvent | None:
    try:
        return await anext(events)
    except StopAsyncIteration:
        # Reported as None so the caller can raise GenerationEndedEarly outside the task.
        return None


async def run_generation(
    request: Request, generator: TextGenerator, generation: GenerationRequest
) -> GenerationOutcome:
    """Generate to the end; cancels on client disconnect; raises APIError if the engine failed."""
    events = generator.generate(generation)
    try:
        outcome = await cancel_on_disconnect(request, _collect(events))
    finally:
        await events.aclose()
    if outcome.finished.reason == "error":
        raise finished_with_error(outcome.finished)
    return outcome


async def start_streamed_generation(
    request: Request, generator: TextGenerator, generation: GenerationRequest, slot: JobSlot | None = None
) -> StartedGeneration:
    """Start a stream and wait for its first event; an immediate failure raises its APIError.

    The returned stream holds ``slot`` until it is closed; if it never starts, the slot is freed here.
    """
    events = generator.generate(generation)
    try:
        first = await cancel_on_disconnect(request, _next_event(events))
        if first is None:
            raise GenerationEndedEarly("the engine ended a sequence without any event")
        if isinstance(first, Finished) and first.reason == "error":
            raise finished_with_error(first)
    except BaseException:
        await _abandon(events, slot)
        raise
    return StartedGeneration(first, events, slot)


def error_event(message: str, status: int = 500) -> str:
    """The SSE frame that ends a stream which failed after it began."""
    return sse_event(generation_failed(message, status).body())


# --- chat completions ------------------------------------------------------------------------------


def reject_unsupported_chat_options(body: ChatCompletionRequest) -> None:
    """400 naming the parameter for every option this server does not honour."""
    if body.n is not None and body.n != 1:
        raise invalid_request("Only n=1 is supported.", param="n")
    if body.logprobs:
        raise invalid_request("logprobs are not supported.", param="logprobs")
    if body.top_logprobs is not None:
        raise invalid_request(
            "top_logprobs is not supported (logprobs are not supported).", param="top_logprobs"
        )
    if body.logit_bias:
        raise invalid_request("logit_bias is not supported.", param="logit_bias")
    if body.store:
        raise invalid_request("Stored completions are not supported.", param="store")
    if body.stream_options is not None and not body.stream:
        raise invalid_request("stream_options is only allowed when stream is true.", param="stream_options")
    if (
        body.max_tokens is not None
        and body.max_completion_tokens is not None
        and body.max_tokens != body.max_completion_tokens
    ):
        raise invalid_request(
            "max_tokens and max_completion_tokens were both given with different values.", param="max_tokens"
        )


@dataclass(frozen=True)
class ChatGeneration:
    """The engine request of one chat completion and how to read its output."""

    request: GenerationRequest
    plan: chat_tools.ChatOutputPlan
    # The chat template's generation prompt already opened a <think> block.
    starts_in_reasoning: bool


async def build_chat_generation(
    request: Request, body: ChatCompletionRequest, generator: TextGenerator, plan: chat_tools.ChatOutputPlan
) -> ChatGeneration:
    """Apply the chat template (off the event loop) and turn the body and its plan into an engine request."""
    prompt = await encode_prompt(
        generator,
        chat_tools.chat_template_messages(body, plan),
        max_chars=api_settings(request).max_prompt_chars,
        param="messages",
    )
    budget = completion_token_budget(generator, len(prompt), body.requested_max_tokens())
    decode = getattr(generator.tokenizer, "decode", None)
    prompt_tail = decode(prompt[-8:]) if decode is not None else ""
    request = GenerationRequest(
        prompt_token_ids=prompt,
        sampling=body.sampling_params(),
        max_new_tokens=budget,
        # A stop string could cut a constrained output short of its grammar (an enforced call or a
        # schema-valid JSON value); there the grammar alone decides where the output ends.
        stop=() if plan.constraint is not None else body.stop_sequences(),
        constraint=plan.constraint,
    )
    return ChatGeneration(
        request=request,
        plan=plan,
        starts_in_reasoning=plan.constraint is None and prompt_opens_reasoning(prompt_tail),
    )


@dataclass(frozen=True)
class CompletionIdentity:
    """What every chunk of one completion shares."""

    id: str
    created: int
    model: str

    @staticmethod
    def new(model: str) -> CompletionIdentity:
        return CompletionIdentity(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), model)


def _usage(finished: Finished) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=finished.prompt_tokens,
        completion_tokens=finished.completion_tokens,
        total_tokens=finished.prompt_tokens + finished.completion_tokens,
    )


def chat_completion_body(
    identity: CompletionIdentity, outcome: GenerationOutcome, chat: ChatGeneration
) -> dict[str, object]:
    message, reason = chat_tools.chat_message(
        outcome.text, outcome.finished.reason, chat.plan, starts_in_reasoning=chat.starts_in_reasoning
    )
    completion = ChatCompletion(
        id=identity.id,
        object="chat.completion",
        created=identity.created,
        model=identity.model,
        choices=[Choice(index=0, message=message, finish_reason=reason, logprobs=None)],
        usage=_usage(outcome.finished),
    )
    return completion.model_dump(mode="json", exclude_unset=True)


class ChunkWriter:
    """Formats the SSE frames of one streamed completion."""

    def __init__(self, identity: CompletionIdentity, include_usage: bool) -> None:
        self.identity = identity
        self.include_usage = include_usage

    def _frame(self, choices: list[ChunkChoice], usage: CompletionUsage | None = None) -> str:
        chunk = ChatCompletionChunk(
            id=self.identity.id,
            object="chat.completion.chunk",
            created=self.identity.created,
            model=self.identity.model,
            choices=choices,
        )
        if self.include_usage:
            chunk.usage = usage  # null on every chunk but the last, as OpenAI does
        return sse_event(chunk.model_dump(mode="json", exclude_unset=True))

    def role(self) -> str:
        return self._frame(
            [ChunkChoice(index=0, delta=ChoiceDelta(role="assistant", content=""), finish_reason=None)]
        )

    def delta(self, delta: ChoiceDelta) -> str:
        """One chunk carrying content, reasoning_content or tool_calls."""
        return self._frame([ChunkChoice(index=0, delta=delta, finish_reason=None)])

    def finish(self, reason: str) -> str:
        return self._frame([ChunkChoice(index=0, delta=ChoiceDelta(), finish_reason=reason)])

    def usage(self, finished: Finished) -> str:
        return self._frame([], usage=_usage(finished))


async def chat_stream_frames(
    started: StartedGeneration, writer: ChunkWriter, interpreter: chat_tools.ChatDeltaInterpreter
) -> AsyncIterator[str]:
    """role chunk, delta chunks, finish chunk, [usage chunk], [DONE]; an error event on failure."""
    yield writer.role()
    event: GenerationEvent | None = started.first_event
    try:
        while event is not None:
            if isinstance(event, TextDelta):
                for delta in interpreter.feed(event.text):
                    yield writer.delta(delta)
            elif event.reason == "error":
                yield sse_event(finished_with_error(event).body())
                break
            else:
                last_deltas, reason = interpreter.finish(event.reason)
                for delta in last_deltas:
                    yield writer.delta(delta)
                yield writer.finish(reason)
                if writer.include_usage:
                    yield writer.usage(event)
                break
            event = await _next_event(started.events)
        if event is None:
            yield error_event("The generation ended unexpectedly.")
    except Exception:
        # The headers are sent, so an engine failure can only be reported in-band.
        logger.exception("request %s: generation failed during a stream", current_request_id())
        yield error_event("The server had an error while generating.")
    yield SSE_DONE


async def _stream_chat(
    request: Request,
    generator: TextGenerator,
    chat: ChatGeneration,
    body: ChatCompletionRequest,
    slot: JobSlot,
) -> Response:
    started = await start_streamed_generation(request, generator, chat.request, slot)
    writer = ChunkWriter(CompletionIdentity.new(body.model), body.include_usage())
    interpreter = chat_tools.ChatDeltaInterpreter(chat.plan, starts_in_reasoning=chat.starts_in_reasoning)
    return EventStreamResponse(chat_stream_frames(started, writer, interpreter), on_close=started.close)


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(request: Request, client: AuthenticatedClient) -> Response:
    # The slot is taken first: decoding, planning and tokenizing are the expensive part of a request.
    slot = job_limiter(request).acquire(client)
    try:
        body = await read_body(request, ChatCompletionRequest)
        reject_unsupported_chat_options(body)
        generator = generator_for(request, body.model)
        # Compiling a grammar for tools or response_format can take a moment: keep it off the event loop.
        plan = await asyncio.to_thread(chat_tools.plan_chat_output, body, generator)
        chat = await build_chat_generation(request, body, generator, plan)
    except BaseException:
        slot.release()
        raise
    if body.stream:
        return await _stream_chat(request, generator, chat, body, slot)
    with slot:
        outcome = await run_generation(request, generator, chat.request)
    return JSONResponse(chat_completion_body(CompletionIdentity.new(body.model), outcome, chat))
