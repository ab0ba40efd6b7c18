"""``POST /v1/chat/completions``: validated chat body -> engine request -> JSON or SSE chunks.

The engine is read through :mod:`language_pipes.api.generation`, shared with
the Responses endpoint; this module plans the chat output and renders chunks.
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
from language_pipes.api.errors import current_request_id, finished_with_error, invalid_request
from language_pipes.api.generation import (
    GenerationEndedEarly,
    GenerationOutcome,
    StartedGeneration,
    error_event,
    run_generation,
    start_streamed_generation,
)
from language_pipes.api.models_route import completion_token_budget, generator_for
from language_pipes.api.prompt import encode_prompt
from language_pipes.api.reasoning import prompt_opens_reasoning
from language_pipes.api.schemas import ChatCompletionRequest
from language_pipes.api.settings import api_settings
from language_pipes.api.sse import SSE_DONE, EventStreamResponse, sse_event
from language_pipes.engine.types import Finished, GenerationRequest, TextDelta, TextGenerator

logger = logging.getLogger(__name__)

router = APIRouter()


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
    try:
        async for event in started.events():
            if isinstance(event, TextDelta):
                for delta in interpreter.feed(event.text):
                    yield writer.delta(delta)
            elif event.reason == "error":
                yield sse_event(finished_with_error(event).body())
            else:
                last_deltas, reason = interpreter.finish(event.reason)
                for delta in last_deltas:
                    yield writer.delta(delta)
                yield writer.finish(reason)
                if writer.include_usage:
                    yield writer.usage(event)
    except GenerationEndedEarly:
        # The engine ended without Finished (an engine bug); the headers are sent, so say it in-band.
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
