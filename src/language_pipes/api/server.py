"""Serve the API app with uvicorn inside the node's already running asyncio loop.

:class:`ApiServer` binds the port itself (so a taken port is a clear
:class:`ApiPortInUseError` at start, not a log line from a background task),
hands the socket to uvicorn, and leaves signal handling to the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

logger = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_SECONDS = 5.0
STARTUP_TIMEOUT_SECONDS = 30.0


class ApiPortInUseError(OSError):
    """``job_port`` is already taken by another process."""


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its own signal handlers: the node owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_listening_socket(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket; raises :class:`ApiPortInUseError` when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise ApiPortInUseError(
                error.errno, f"job_port {port} on {host} is already in use by another process"
            ) from None
        raise
    sock.setblocking(False)
    return sock


class ApiServer:
    """uvicorn serving ``app`` on ``(host, port)`` as a task of the running loop."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.requested_port = port
        self._socket: socket.socket | None = None
        self._server: _EmbeddedUvicorn | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The bound port (differs from the requested one when that was 0)."""
        if self._socket is None:
            return self.requested_port
        bound_port: int = self._socket.getsockname()[1]
        return bound_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    async def start(self) -> None:
        """Bind the port and return once uvicorn accepts connections."""
        if self._task is not None:
            raise RuntimeError("the API server is already running")
        self._socket = bind_listening_socket(self.host, self.requested_port)
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=int(GRACEFUL_SHUTDOWN_SECONDS),
        )
        self._server = _EmbeddedUvicorn(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]), name="api-server")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STARTUP_TIMEOUT_SECONDS
        while not self._server.started:
            if self._task.done():
                await self._task  # re-raises why uvicorn stopped
                raise RuntimeError("the API server stopped while starting")
            if loop.time() > deadline:
                await self.stop()
                raise TimeoutError(f"the API server did not start within {STARTUP_TIMEOUT_SECONDS} s")
            await asyncio.sleep(0.01)
        logger.info("OpenAI-compatible API listening on %s", self.url)

    async def stop(self) -> None:
        """Stop accepting, let open requests finish briefly, then close them."""
        server, task = self._server, self._task
        self._server = self._task = None
        if server is not None and task is not None:
            server.should_exit = True
            try:
                await asyncio.wait_for(asyncio.shield(task), GRACEFUL_SHUTDOWN_SECONDS + 2)
            except TimeoutError:
                # Open streams did not finish in time: make uvicorn drop them.
                server.force_exit = True
                await task
        if self._socket is not None:
            self._socket.close()
            self._socket = None
