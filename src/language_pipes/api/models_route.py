"""``GET /v1/models`` and ``GET /v1/models/{id}``, plus the model lookups every endpoint shares.

* :func:`generator_for` maps a requested model id to its :class:`TextGenerator`
  (404 ``model_not_found`` / 503 when no complete pipe serves it), timed for
  ``/metrics``.
* :func:`completion_token_budget` decides how many tokens a request may
  generate: the requested limit (default 1000) capped by what is left of the
  context window; a prompt that does not fit is a 400.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from openai.types import Model

from language_pipes.api.auth import AuthenticatedClient
from language_pipes.api.errors import invalid_request, model_not_found, model_unavailable
from language_pipes.api.metrics_route import TimedGenerator
from language_pipes.engine.types import ModelCatalog, ModelUnavailableError, ModelUnknownError, TextGenerator

DEFAULT_MAX_COMPLETION_TOKENS = 1000
MODEL_OWNER = "language-pipes"

router = APIRouter()


def model_catalog(request: Request) -> ModelCatalog:
    """The node's catalog (``app.state.catalog``)."""
    catalog: ModelCatalog = request.app.state.catalog
    return catalog


def generator_for(request: Request, model_id: str) -> TextGenerator:
    """The generator serving ``model_id``, or the 404/503 :class:`APIError` a client should see."""
    try:
        generator = model_catalog(request).generator(model_id)
    except ModelUnknownError:
        raise model_not_found(model_id) from None
    except ModelUnavailableError:
        raise model_unavailable(model_id) from None
    # Every generation a route starts is timed for /metrics (TTFT, time per output token).
    return TimedGenerator(generator)


def completion_token_budget(
    generator: TextGenerator, prompt_tokens: int, requested: int | None, *, param: str = "messages"
) -> int:
    """How many tokens to generate at most; raises 400 when the prompt leaves no room."""
    room = generator.context_length - prompt_tokens
    if room < 1:
        raise invalid_request(
            f"This model's maximum context length is {generator.context_length} tokens, "
            f"but the prompt has {prompt_tokens} tokens.",
            param=param,
            code="context_length_exceeded",
        )
    wanted = DEFAULT_MAX_COMPLETION_TOKENS if requested is None else requested
    return min(wanted, room)


def _model_card(model_id: str, created: int) -> Model:
    return Model(id=model_id, object="model", created=created, owned_by=MODEL_OWNER)


def _listing_time(request: Request) -> int:
    started: int = getattr(request.app.state, "started_at", int(time.time()))
    return started


@router.get("/v1/models")
async def list_models(request: Request, client: AuthenticatedClient) -> dict[str, object]:
    """Exactly the models this node can serve right now."""
    created = _listing_time(request)
    cards = [
        _model_card(model_id, created).model_dump(exclude_none=True)
        for model_id in model_catalog(request).servable_models()
    ]
    return {"object": "list", "data": cards}


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(request: Request, model_id: str, client: AuthenticatedClient) -> dict[str, object]:
    """One servable model (ids contain a slash, hence the path converter)."""
    if model_id not in model_catalog(request).servable_models():
        raise model_not_found(model_id)
    return _model_card(model_id, _listing_time(request)).model_dump(exclude_none=True)
