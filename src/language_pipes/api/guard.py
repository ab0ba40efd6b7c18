"""The outermost ASGI layer of the API: request ids, Host and Origin checks, the body size limit.

:class:`RequestGuard` runs before routing and before any body byte is read:

* every HTTP request gets a request id (``x-request-id`` response header,
  :func:`current_request_id` while it is served) so a 5xx body can name it
  and the log line with the details can be found;
* a ``Host`` that is a name not allowed by :func:`~language_pipes.api.settings.host_is_allowed`
  is refused with 403 ``host_not_allowed`` (DNS rebinding);
* a browser request from another origin (``Origin`` not in the allow-list, or
  ``Sec-Fetch-Site`` cross-site without an ``Origin``) is refused with 403
  ``origin_not_allowed``; clients that send no ``Origin`` (SDKs, curl) pass;
* an exception no handler answered is logged with the request id and
  becomes a 500 envelope naming only that id;
* a body over ``max_body_bytes`` is refused with 413 ``request_too_large``:
  at once from ``Content-Length``, or as soon as a streamed (chunked) body
  passes the limit, since :class:`BodyTooLarge` is raised from ``receive``.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from language_pipes.api.errors import REQUEST_ID, APIError, current_request_id, internal_error
from language_pipes.api.settings import ApiSettings, host_is_allowed, origin_is_allowed

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger(__name__)

# ASCII digits only: str.isdigit() also accepts characters such as "²" that int() refuses.
_DIGITS = re.compile(r"[0-9]{1,20}")

REQUEST_ID_HEADER = "x-request-id"
__all__ = ["REQUEST_ID_HEADER", "BodyTooLarge", "RequestGuard", "current_request_id", "request_rejection"]


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex[:24]}"


class BodyTooLarge(APIError):
    """The request body passed ``max_body_bytes``."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            f"The request body is larger than this server accepts ({limit} bytes).",
            code="request_too_large",
        )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _forbidden(message: str, code: str) -> APIError:
    return APIError(403, message, error_type="invalid_request_error", code=code)


def request_rejection(settings: ApiSettings, scope: Scope) -> APIError | None:
    """Why this request must not be served, judged from its headers alone, or None."""
    host = _header(scope, b"host")
    if not host_is_allowed(settings, host):
        return _forbidden(
            f"Host '{host}' is not served here. Add it to api_allowed_hosts to allow it.", "host_not_allowed"
        )
    origin = _header(scope, b"origin")
    fetch_site = (_header(scope, b"sec-fetch-site") or "").lower()
    if origin is not None and not origin_is_allowed(settings, origin):
        return _forbidden(
            f"Requests from the web origin '{origin}' are not allowed. "
            "Add it to api_allowed_origins to allow it.",
            "origin_not_allowed",
        )
    if origin is None and fetch_site in ("cross-site", "same-site"):
        return _forbidden("Cross-site browser requests are not allowed.", "origin_not_allowed")
    length = _header(scope, b"content-length")
    if length is not None:
        if not _DIGITS.fullmatch(length.strip()):
            return APIError(400, "The Content-Length header is not a number.", code="invalid_content_length")
        if int(length) > settings.max_body_bytes:
            return BodyTooLarge(settings.max_body_bytes)
    return None


class RequestGuard:
    """ASGI middleware applying :func:`request_rejection` and counting body bytes (see module doc)."""

    def __init__(self, app: ASGIApp, settings: ApiSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        token = REQUEST_ID.set(request_id)
        try:
            send_with_id = _SendWithId(send, request_id)
            rejection = request_rejection(self.settings, scope)
            if rejection is not None:
                await rejection.response()(scope, receive, send_with_id)
                return
            await self.app(scope, _limited_receive(receive, self.settings.max_body_bytes), send_with_id)
        except Exception:
            # Anything no handler turned into a response: log it under the request id, answer a
            # 500 envelope naming that id (never the exception's text) if nothing was sent yet.
            logger.exception(
                "request %s: unexpected error while serving %s %s",
                request_id,
                scope.get("method"),
                scope.get("path"),
            )
            if send_with_id.started:
                raise
            await internal_error().response()(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)


class _SendWithId:
    """``send`` adding the request id header to the response, remembering whether one began."""

    def __init__(self, send: Send, request_id: str) -> None:
        self.send = send
        self.request_id = request_id
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            headers = list(message.get("headers", ()))
            headers.append((REQUEST_ID_HEADER.encode(), self.request_id.encode()))
            message["headers"] = headers
        await self.send(message)


def _limited_receive(receive: Receive, limit: int) -> Receive:
    received = 0

    async def limited() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit)
        return message

    return limited
