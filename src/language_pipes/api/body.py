"""Reading a request body: JSON content type, bounded decoding off the event loop, then validation.

:func:`read_body` is what every POST endpoint calls: 415 unless the body is
declared JSON; the bytes are bounded by the request guard
(:mod:`language_pipes.api.guard`); decoding and validation run in a worker
thread; strings with lone surrogates and nesting deeper than
:data:`MAX_JSON_DEPTH` are a 400 naming where they are, before validation.
"""

from __future__ import annotations

import asyncio
import json
import re

from starlette.requests import Request

from language_pipes.api.errors import APIError, invalid_request
from language_pipes.api.schemas import ModelT, param_path, validate_body

# Deeper JSON is refused before validation (no legitimate body needs it; schemas compile recursively).
MAX_JSON_DEPTH = 64
JSON_MEDIA_TYPE = "application/json"


def _reject_json_constant(constant: str) -> object:
    raise ValueError(f"{constant} is not valid JSON")


_SURROGATE = re.compile("[\ud800-\udfff]")


def check_json_text(payload: object) -> None:
    """400 for a string with a lone UTF-16 surrogate (``"\\ud800"``) or nesting past MAX_JSON_DEPTH.

    Such a string cannot be encoded as UTF-8, so it would fail deep inside
    tokenization; the walk is iterative, so no depth can exhaust the stack.
    """
    pending: list[tuple[object, tuple[int | str, ...]]] = [(payload, ())]
    while pending:
        value, location = pending.pop()
        if len(location) > MAX_JSON_DEPTH:
            raise invalid_request(
                f"The JSON body is nested more than {MAX_JSON_DEPTH} levels deep.",
                param=param_path(location[:1]) or None,
            )
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise invalid_request(
                    "A string contains a lone UTF-16 surrogate escape (such as \\ud800), "
                    "which is not valid Unicode text.",
                    param=param_path(location) or None,
                    code="invalid_unicode",
                )
        elif isinstance(value, dict):
            for key, item in value.items():
                if _SURROGATE.search(key):
                    raise invalid_request(
                        "An object key contains a lone UTF-16 surrogate escape.",
                        param=param_path(location) or None,
                        code="invalid_unicode",
                    )
                pending.append((item, (*location, key)))
        elif isinstance(value, list):
            pending.extend((item, (*location, index)) for index, item in enumerate(value))


def decode_body(raw: bytes, model: type[ModelT]) -> ModelT:
    """Decode and validate a JSON body (CPU-bound: run it in a worker thread for big bodies)."""
    if not raw.strip():
        raise invalid_request("The request body is empty; expected a JSON object.")
    try:
        payload = json.loads(raw, parse_constant=_reject_json_constant)
    except (ValueError, RecursionError) as error:
        # ValueError covers JSONDecodeError, bad UTF-8 and NaN/Infinity; RecursionError absurd nesting.
        raise invalid_request(f"We could not parse the JSON body of your request: {error}") from None
    check_json_text(payload)
    return validate_body(model, payload)


def check_json_content_type(request: Request) -> None:
    """415 unless the body is declared JSON (a browser form cannot send that without a CORS preflight)."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.partition(";")[0].strip().lower()
    json_subtype = media_type.startswith("application/") and media_type.endswith("+json")
    if media_type != JSON_MEDIA_TYPE and not json_subtype:
        raise APIError(
            415,
            f"Unsupported Content-Type '{content_type or '(none)'}': send the body as {JSON_MEDIA_TYPE}.",
            code="unsupported_media_type",
        )


async def read_body(request: Request, model: type[ModelT]) -> ModelT:
    """Check the content type, read (bounded by the guard), decode and validate a JSON body.

    415 for a non-JSON content type; 400 for malformed JSON or a bad field. Decoding and
    validation run in a worker thread, so a large body does not hold up the event loop.
    """
    check_json_content_type(request)
    raw = await request.body()
    return await asyncio.to_thread(decode_body, raw, model)
