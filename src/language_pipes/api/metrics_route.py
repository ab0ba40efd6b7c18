"""``GET /metrics`` (Prometheus text format) and what the API records into it.

* :class:`RequestMetrics`, outermost middleware: counts every answered request by
  endpoint (the matched route's path, ``unmatched`` otherwise, so a scanner's
  random paths cannot grow the label set) and status.
* :class:`TimedGenerator` wraps the generator a route gets from ``generator_for``:
  time to first token and time per output token of every generation, streamed
  or not, chat or responses.
* ``/metrics`` asks for the API key when ``api_keys`` are configured, like every
  ``/v1`` route: the metrics name the peers of the pipe and the load of the
  node, which a node that requires keys does not tell strangers. A Prometheus
  server sends the key with ``authorization: {credentials: KEY}`` in its scrape
  config. Without ``api_keys`` it is open, as the API is.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from language_pipes import metrics
from language_pipes.api.auth import AuthenticatedClient
from language_pipes.engine.types import (
    Finished,
    GenerationEvent,
    GenerationRequest,
    TextDelta,
    TextGenerator,
)

router = APIRouter()

UNMATCHED_ENDPOINT = "unmatched"


@router.get("/metrics")
async def get_metrics(request: Request, client: AuthenticatedClient) -> Response:
    return Response(metrics.render(request.app.state.metrics_registry), media_type=metrics.CONTENT_TYPE)


class RequestMetrics:
    """ASGI middleware: one ``lp_requests_total`` count per HTTP request, labelled once it is answered."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the server answers when the app fails before starting a response

        async def remember_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, remember_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or UNMATCHED_ENDPOINT
            metrics.record_request(endpoint, status)


class TimedGenerator:
    """A :class:`TextGenerator` recording the pace of each generation into :mod:`language_pipes.metrics`."""

    def __init__(self, inner: TextGenerator) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        # model_id, context_length, tokenizer, encode_chat and anything a route reads: the inner's.
        return getattr(self._inner, name)

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        return _timed(self._inner.generate(request))


async def _timed(events: AsyncIterator[GenerationEvent]) -> AsyncIterator[GenerationEvent]:
    started = time.perf_counter()
    first_token_at: float | None = None
    try:
        async for event in events:
            if isinstance(event, TextDelta) and event.token_ids and first_token_at is None:
                first_token_at = time.perf_counter()
                metrics.record_first_token(first_token_at - started)
            elif isinstance(event, Finished) and first_token_at is not None and event.reason != "error":
                metrics.record_output_pace(time.perf_counter() - first_token_at, event.completion_tokens - 1)
            yield event
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
