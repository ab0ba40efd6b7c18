"""Server-sent events, and stopping work when the HTTP client goes away.

* :func:`sse_event` / :data:`SSE_DONE` format ``data: ...`` frames.
* :class:`EventStreamResponse` sends an async iterator of frames and watches the
  connection while doing so: when the client disconnects, the iterator is
  cancelled at once, and ``on_close`` always runs afterwards (normal end, error
  or disconnect), which is where an endpoint closes the engine's generator and
  releases its job slot.
* :func:`cancel_on_disconnect` runs one awaitable (a whole non-streamed
  generation, or waiting for the first event of a stream) and cancels it if the
  client disconnects first, raising :class:`ClientDisconnected`.

Disconnects are detected by reading the ASGI ``receive`` channel: once the body
has been read, the next message a server sends is ``http.disconnect``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

logger = logging.getLogger(__name__)

ResultT = TypeVar("ResultT")

SSE_DONE = "data: [DONE]\n\n"


def sse_event(payload: dict[str, Any], event: str | None = None) -> str:
    """One SSE frame carrying ``payload`` as compact JSON (with an ``event:`` line when named)."""
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {data}\n\n"


class ClientDisconnected(Exception):
    """The HTTP client went away before the answer was ready."""


async def wait_for_disconnect(receive: Receive) -> None:
    """Return when the server reports that the client disconnected."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _cancel_and_wait(task: asyncio.Future[Any]) -> None:
    if task.done():
        return
    task.cancel()
    # The task is being cancelled on purpose; its CancelledError is expected.
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def cancel_on_disconnect(request: Request, work: Awaitable[ResultT]) -> ResultT:
    """Await ``work``; if the client disconnects first, cancel it and raise :class:`ClientDisconnected`."""
    work_task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(request.receive))
    try:
        await asyncio.wait({work_task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        # This handler itself is being cancelled (server shutdown): stop both, keep cancelling.
        await _cancel_and_wait(watcher)
        await _cancel_and_wait(work_task)
        raise
    await _cancel_and_wait(watcher)
    if not work_task.done():
        await _cancel_and_wait(work_task)
        raise ClientDisconnected
    return work_task.result()


class EventStreamResponse(Response):
    """A ``text/event-stream`` response that stops producing as soon as the client leaves."""

    media_type = "text/event-stream"

    def __init__(
        self,
        frames: AsyncIterator[str],
        on_close: Callable[[], Awaitable[None]],
        headers: dict[str, str] | None = None,
    ) -> None:
        self.frames = frames
        self.on_close = on_close
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})

    async def _send_frames(self, send: Send) -> None:
        async for frame in self.frames:
            await send({"type": "http.response.body", "body": frame.encode("utf-8"), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            )
            sender = asyncio.ensure_future(self._send_frames(send))
            watcher = asyncio.ensure_future(wait_for_disconnect(receive))
            try:
                await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                await _cancel_and_wait(watcher)
                if not sender.done():
                    logger.info("client disconnected during a stream; cancelling its generation")
                    await _cancel_and_wait(sender)
            if not sender.cancelled() and sender.exception() is not None:
                # Headers are gone; all that is left is to log it (the frames end with an error event
                # when the engine fails, so an exception here is a send failure or a bug).
                logger.warning("event stream ended early: %r", sender.exception())
        finally:
            # aclose runs the frame generator's cleanup even if it never started or was cancelled.
            aclose = getattr(self.frames, "aclose", None)
            if aclose is not None:
                await aclose()
            await self.on_close()
