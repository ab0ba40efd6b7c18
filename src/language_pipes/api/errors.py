"""OpenAI's error envelope and the exceptions that map onto it.

Every failure the API reports is an :class:`APIError`; the app turns it into
``{"error": {"message", "type", "param", "code"}}`` with the matching status.
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any

from fastapi.responses import JSONResponse

from language_pipes.engine.types import FailureKind, Finished

logger = logging.getLogger(__name__)

# Set by the request guard (language_pipes.api.guard) for the request being served.
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("api_request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being served in this context (None outside a request)."""
    return REQUEST_ID.get()


class APIError(Exception):
    """A failure with an HTTP status, in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def model_not_found(model: str) -> APIError:
    return APIError(
        404,
        f"The model '{model}' does not exist or is not hosted here.",
        param="model",
        code="model_not_found",
    )


def model_unavailable(model: str) -> APIError:
    return APIError(
        503,
        f"The model '{model}' has no complete pipe on the network right now.",
        error_type="service_unavailable",
        param="model",
        code="no_complete_pipe",
    )


def _with_request_id(message: str) -> str:
    request_id = current_request_id()
    return f"{message} (request id {request_id})" if request_id else message


# The HTTP status of each kind of engine failure: the engine names the kind, the API owns the status.
FAILURE_STATUS: dict[FailureKind, int] = {"internal": 500, "unavailable": 503, "timeout": 504}


def generation_failed(message: str | None, status: int = 500, public: str | None = None) -> APIError:
    """The engine reported an error; a 5xx keeps its details in the log, not in the body.

    A 4xx is about the request and keeps the engine's message; a 5xx says only
    what failed (``public``, written by this node for the client, when the engine
    gave one) and names the request id, and the engine's text is logged with it.
    """
    if status < 500:
        return APIError(status, message or "The generation failed.", error_type="invalid_request_error")
    logger.warning("request %s: generation failed (%d): %s", current_request_id(), status, message)
    if public is not None:
        error_type = "service_unavailable" if status == 503 else "server_error"
        return APIError(status, _with_request_id(public), error_type=error_type)
    if status == 503:
        public = "The pipe serving this model failed while generating; try again."
        error_type = "service_unavailable"
    elif status == 504:
        public = "The pipe serving this model did not answer in time; try again."
        error_type = "server_error"
    else:
        public = "The server had an error while generating."
        error_type = "server_error"
    return APIError(status, _with_request_id(public), error_type=error_type)


def finished_with_error(finished: Finished) -> APIError:
    """The error a sequence that ended with ``reason == "error"`` answers with."""
    return generation_failed(finished.error, FAILURE_STATUS[finished.failure], finished.public_error)


def route_not_found(method: str, path: str) -> APIError:
    return APIError(404, f"Invalid URL ({method} {path})", code="unknown_url")


def method_not_allowed(method: str, path: str, allowed: str | None) -> APIError:
    headers = {"Allow": allowed} if allowed else None
    return APIError(
        405, f"Method {method} is not allowed for {path}", code="method_not_allowed", headers=headers
    )


def internal_error() -> APIError:
    return APIError(
        500,
        _with_request_id("The server had an error while processing your request."),
        error_type="server_error",
    )
