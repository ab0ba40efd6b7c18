"""The API's limits and browser rules, with the defaults a node uses when its config says nothing.

:class:`ApiSettings` is built from a node's config by :meth:`ApiSettings.from_config`
(keys ``api_max_body_bytes``, ``api_max_prompt_chars``, ``api_allowed_origins``,
``api_allowed_hosts``, ``api_response_store_bytes``) and lives on
``app.state.settings``. :func:`host_is_allowed` and :func:`origin_is_allowed` are
the checks the request guard (:mod:`language_pipes.api.guard`) applies.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_PROMPT_CHARS = 1_000_000
DEFAULT_RESPONSE_STORE_BYTES = 64 * 1024 * 1024
DEFAULT_RESPONSE_STORE_ENTRIES = 512
DEFAULT_STREAM_HEARTBEAT_SECONDS = 10.0
# Host names that always mean this machine (browsers resolve *.localhost to loopback themselves).
LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost", "ip6-loopback"})
ANY = "*"


@dataclass(frozen=True)
class ApiSettings:
    """Limits on what one request may send, and which browsers and Host names are served."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS
    # Exact origins ("http://localhost:3000") allowed to call from a browser; "*" allows any.
    allowed_origins: frozenset[str] = frozenset()
    # Host names (besides loopback names and IP literals) a request's Host may carry; "*" allows any.
    allowed_hosts: frozenset[str] = frozenset()
    response_store_bytes: int = DEFAULT_RESPONSE_STORE_BYTES
    response_store_entries: int = DEFAULT_RESPONSE_STORE_ENTRIES
    # A /v1/responses stream that has sent nothing for this long repeats response.in_progress, so
    # clients with an idle timeout (Codex: 300 s) keep waiting while a slow node works.
    stream_heartbeat_seconds: float = DEFAULT_STREAM_HEARTBEAT_SECONDS

    @staticmethod
    def from_config(config: Any) -> ApiSettings:
        """Settings from a :class:`~language_pipes.config.NodeConfig` (its ``network_ip`` is a known host)."""
        return ApiSettings(
            max_body_bytes=config.api_max_body_bytes,
            max_prompt_chars=config.api_max_prompt_chars,
            allowed_origins=frozenset(origin.rstrip("/").lower() for origin in config.api_allowed_origins),
            allowed_hosts=frozenset(host.lower() for host in config.api_allowed_hosts)
            | {config.network_ip.lower()},
            response_store_bytes=config.api_response_store_bytes,
        )


def host_name(host_header: str) -> str:
    """The name part of a Host header: ``[::1]:8000`` -> ``::1``, ``Example.com:80`` -> ``example.com``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        # Not an address: a name, which is what DNS rebinding needs.
        return False
    return True


def host_is_allowed(settings: ApiSettings, host_header: str | None) -> bool:
    """Whether a request's Host may be served.

    DNS rebinding needs the browser to send a host *name* the attacker controls,
    so IP literals, loopback names and the configured names pass; other names
    are refused unless ``allowed_hosts`` lists them (or ``"*"``). A request
    without a Host header (HTTP/1.0 tools) comes from no browser and passes.
    """
    if host_header is None or ANY in settings.allowed_hosts:
        return True
    name = host_name(host_header)
    if _is_ip_literal(name) or name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    return name in settings.allowed_hosts or name.rstrip(".") in settings.allowed_hosts


def origin_is_allowed(settings: ApiSettings, origin: str) -> bool:
    """Whether a browser page of ``origin`` may call the API (exact match, case-insensitive)."""
    return ANY in settings.allowed_origins or origin.rstrip("/").lower() in settings.allowed_origins


def api_settings(request: Any) -> ApiSettings:
    """The app's settings (``app.state.settings``); the defaults for an app built without them."""
    settings: ApiSettings | None = getattr(request.app.state, "settings", None)
    return settings or ApiSettings()
