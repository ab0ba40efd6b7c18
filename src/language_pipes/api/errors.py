"""OpenAI's error envelope and the exceptions that map onto it.

Every failure the API reports is an :class:`APIError`; the app turns it into
``{"error": {"message", "type", "param", "code"}}`` with the matching status.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse


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


def generation_failed(message: str | None, status: int = 500) -> APIError:
    """The engine reported an error before anything was sent to the client."""
    error_type = (
        "service_unavailable"
        if status == 503
        else "server_error"
        if status >= 500
        else ("invalid_request_error")
    )
    return APIError(status, message or "The generation failed.", error_type=error_type)


def route_not_found(method: str, path: str) -> APIError:
    return APIError(404, f"Invalid URL ({method} {path})", code="unknown_url")


def method_not_allowed(method: str, path: str, allowed: str | None) -> APIError:
    headers = {"Allow": allowed} if allowed else None
    return APIError(
        405, f"Method {method} is not allowed for {path}", code="method_not_allowed", headers=headers
    )


def internal_error() -> APIError:
    return APIError(500, "The server had an error while processing your request.", error_type="server_error")
