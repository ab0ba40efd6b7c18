"""``POST /v1/chat/completions``: validated chat body -> engine request -> JSON or SSE chunks.

This module checks and plans the request; the rest is the pipeline shared with
the Responses endpoint (:mod:`language_pipes.api.generation`), rendered by
:mod:`language_pipes.api.chat_render`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from language_pipes.api import chat_tools
from language_pipes.api.auth import AuthenticatedClient, job_limiter
from language_pipes.api.body import read_body
from language_pipes.api.chat_render import ChatStreamRenderer, CompletionIdentity, chat_completion_body
from language_pipes.api.errors import invalid_request
from language_pipes.api.generation import run_generation, start_streamed_generation, stream_frames
from language_pipes.api.models_route import completion_token_budget, generator_for
from language_pipes.api.output import OutputInterpreter, OutputReading
from language_pipes.api.prompt import encode_prompt, prompt_opens_reasoning
from language_pipes.api.schemas import ChatCompletionRequest
from language_pipes.api.settings import api_settings
from language_pipes.api.sse import EventStreamResponse
from language_pipes.engine.types import GenerationRequest, TextGenerator

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
    reading: OutputReading


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
        request, plan.reading(starts_in_reasoning=prompt_opens_reasoning(generator, prompt))
    )


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
    identity = CompletionIdentity.new(body.model)
    interpreter = OutputInterpreter(chat.reading)
    if body.stream:
        started = await start_streamed_generation(request, generator, chat.request, slot)
        renderer = ChatStreamRenderer(identity, body.include_usage())
        return EventStreamResponse(stream_frames(started, interpreter, renderer), on_close=started.close)
    with slot:
        items = await run_generation(request, generator, chat.request, interpreter)
    return JSONResponse(chat_completion_body(identity, items))
