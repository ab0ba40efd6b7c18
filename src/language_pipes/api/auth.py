"""Bearer-key authentication and the per-key limit on requests in flight.

* :func:`authenticate` is the FastAPI dependency every ``/v1`` route uses. With
  ``api_keys`` configured it requires ``Authorization: Bearer <key>`` naming one
  of them (401 otherwise); with none configured any or no key is accepted.
  It returns the :data:`ClientKey` the request is counted under.
* :class:`JobLimiter` allows ``max_api_jobs`` requests in flight per client key,
  exactly; the next one gets 429 with ``Retry-After``. ``acquire`` hands out a
  :class:`JobSlot` that the endpoint releases when the request is really over
  (for a stream: when the stream ends).
"""

from __future__ import annotations

import hmac
from collections import Counter
from types import TracebackType
from typing import Annotated, NewType

from fastapi import Depends, Request

from language_pipes.api.errors import APIError

ClientKey = NewType("ClientKey", str)

ANONYMOUS_CLIENT = ClientKey("anonymous")
RETRY_AFTER_SECONDS = 1


def _unauthorized(message: str) -> APIError:
    return APIError(401, message, error_type="invalid_request_error", code="invalid_api_key")


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def check_api_key(configured_keys: frozenset[str], authorization: str | None) -> ClientKey:
    """Which client key a request counts under; raises 401 when keys are required and this one is wrong."""
    token = bearer_token(authorization)
    if not configured_keys:
        return ClientKey(token) if token else ANONYMOUS_CLIENT
    if token is None:
        raise _unauthorized(
            "You didn't provide an API key. Send it in an 'Authorization: Bearer <key>' header."
        )
    # Compare against every key in constant time so timing does not reveal a prefix.
    matches = [hmac.compare_digest(token.encode(), key.encode()) for key in configured_keys]
    if not any(matches):
        raise _unauthorized("Incorrect API key provided.")
    return ClientKey(token)


async def authenticate(request: Request) -> ClientKey:
    """FastAPI dependency: the caller's :data:`ClientKey` (reads ``app.state.api_keys``)."""
    return check_api_key(request.app.state.api_keys, request.headers.get("authorization"))


AuthenticatedClient = Annotated[ClientKey, Depends(authenticate)]


class JobSlot:
    """One request in flight for a client key; release it exactly once (extra calls are no-ops)."""

    def __init__(self, limiter: JobLimiter, client: ClientKey) -> None:
        self._limiter = limiter
        self.client = client
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._limiter._release(self.client)

    def __enter__(self) -> JobSlot:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


class JobLimiter:
    """At most ``max_jobs`` requests in flight per client key (used only from the event loop)."""

    def __init__(self, max_jobs: int) -> None:
        if max_jobs < 1:
            raise ValueError(f"max_api_jobs must be at least 1, got {max_jobs}")
        self.max_jobs = max_jobs
        self._in_flight: Counter[ClientKey] = Counter()

    def in_flight(self, client: ClientKey) -> int:
        return self._in_flight[client]

    def acquire(self, client: ClientKey) -> JobSlot:
        """A slot for one more request, or a 429 :class:`APIError` with ``Retry-After``."""
        if self._in_flight[client] >= self.max_jobs:
            raise APIError(
                429,
                f"Too many requests in flight for this API key: the limit is {self.max_jobs} at a time.",
                error_type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        self._in_flight[client] += 1
        return JobSlot(self, client)

    def _release(self, client: ClientKey) -> None:
        self._in_flight[client] -= 1
        if self._in_flight[client] <= 0:
            del self._in_flight[client]


def job_limiter(request: Request) -> JobLimiter:
    """The app's limiter (``app.state.job_limiter``)."""
    limiter: JobLimiter = request.app.state.job_limiter
    return limiter
