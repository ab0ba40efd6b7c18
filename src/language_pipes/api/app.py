"""The FastAPI application of a node's OpenAI-compatible API.

:func:`create_app` wires the routes (chat completions, models, responses) and
the error handlers that keep every failure in OpenAI's envelope: a 400 naming
the parameter instead of FastAPI's 422, 404/405 for unknown routes, and a
logged 500 for anything unexpected.

Shared state on ``app.state`` (read through the helpers named here):

* ``catalog``: the node's :class:`ModelCatalog`
  (:func:`language_pipes.api.models_route.model_catalog`, ``generator_for``);
* ``api_keys``: ``frozenset[str]`` of accepted bearer keys, empty = open
  (:func:`language_pipes.api.auth.authenticate`, ``AuthenticatedClient``);
* ``job_limiter``: the per-key :class:`JobLimiter` of requests in flight
  (:func:`language_pipes.api.auth.job_limiter`);
* ``started_at``: Unix time the app was created (``created`` of model cards);
* ``settings``: the :class:`ApiSettings` (body and prompt limits, allowed
  origins and hosts, response store bounds).

Outermost is :class:`~language_pipes.api.metrics_route.RequestMetrics` (counts
every request for ``/metrics``), then the :class:`~language_pipes.api.guard.RequestGuard`
(request id, Host/Origin checks, body size limit), then CORS for the allowed origins.

Building blocks for another endpoint: ``body.read_body`` and
``schemas.SamplingFields``, ``models_route.completion_token_budget``,
``generation.run_generation`` / ``generation.start_streamed_generation`` /
``generation.stream_frames`` with a ``StreamRenderer``, ``sse.EventStreamResponse`` / ``sse.sse_event`` /
``sse.SSE_DONE``.
"""

from __future__ import annotations

import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from language_pipes import metrics
from language_pipes.api import chat, metrics_route, models_route, responses
from language_pipes.api.auth import JobLimiter
from language_pipes.api.errors import (
    APIError,
    current_request_id,
    internal_error,
    method_not_allowed,
    route_not_found,
)
from language_pipes.api.guard import RequestGuard
from language_pipes.api.response_store import ResponseStore
from language_pipes.api.schemas import validation_error_to_api_error
from language_pipes.api.settings import ANY, ApiSettings
from language_pipes.api.sse import ClientDisconnected
from language_pipes.engine.types import ModelCatalog

logger = logging.getLogger(__name__)

# Status for a request whose client left before the answer: nobody reads it (nginx's convention).
CLIENT_CLOSED_REQUEST = 499


async def _api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, APIError)
    return error.response()


async def _validation_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    # FastAPI prefixes locations with "body"/"path"/"query"; drop that part.
    return validation_error_to_api_error(list(error.errors()), location_prefix=1).response()


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, StarletteHTTPException)
    if error.status_code == 404:
        return route_not_found(request.method, request.url.path).response()
    if error.status_code == 405:
        allowed = (error.headers or {}).get("Allow") or (error.headers or {}).get("allow")
        return method_not_allowed(request.method, request.url.path, allowed).response()
    return APIError(error.status_code, str(error.detail), headers=dict(error.headers or {})).response()


async def _client_disconnected(request: Request, error: Exception) -> Response:
    return Response(status_code=CLIENT_CLOSED_REQUEST)


async def _unexpected_error(request: Request, error: Exception) -> Response:
    logger.exception(
        "request %s: unexpected error while serving %s %s",
        current_request_id(),
        request.method,
        request.url.path,
    )
    return internal_error().response()


def create_app(
    catalog: ModelCatalog,
    *,
    api_keys: list[str],
    max_api_jobs: int,
    settings: ApiSettings | None = None,
    node_state: metrics.NodeStateSource | None = None,
) -> FastAPI:
    """The API app for one node; ``max_api_jobs`` requests in flight per key.

    ``node_state`` feeds the gauges of ``/metrics`` (queue depth, KV use) at scrape time.
    """
    settings = settings or ApiSettings()
    app = FastAPI(
        title="Language Pipes",
        summary="OpenAI-compatible API of a Language Pipes node",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.catalog = catalog
    app.state.api_keys = frozenset(api_keys)
    app.state.job_limiter = JobLimiter(max_api_jobs)
    app.state.started_at = int(time.time())
    app.state.settings = settings
    app.state.response_store = ResponseStore(
        settings.response_store_entries, max_bytes=settings.response_store_bytes
    )
    app.state.metrics_registry = metrics.build_registry(node_state)

    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnected, _client_disconnected)
    app.add_exception_handler(Exception, _unexpected_error)

    app.include_router(chat.router)
    app.include_router(models_route.router)
    app.include_router(metrics_route.router)
    app.include_router(responses.router)
    if settings.allowed_origins:
        # Browsers on an allowed origin need CORS answers; the guard has refused every other origin.
        origins = ["*"] if ANY in settings.allowed_origins else sorted(settings.allowed_origins)
        app.add_middleware(
            CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"], allow_headers=["*"]
        )
    app.add_middleware(RequestGuard, settings=settings)
    # Outermost, so requests the guard refuses are counted too.
    app.add_middleware(metrics_route.RequestMetrics)
    return app
