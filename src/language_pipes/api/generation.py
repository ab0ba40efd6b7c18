"""One way from an engine request to an answer, shared by every generating endpoint.

Both endpoints turn their body into a :class:`GenerationRequest` and an
:class:`~language_pipes.api.output.OutputReading`, and from there take the same
path: engine events -> :class:`~language_pipes.api.output.OutputInterpreter`
-> typed output items -> the endpoint's renderer (chat chunks, Responses
events). Two ways of running it, both raising :class:`APIError` on a failure
that happens before anything was sent:

* :func:`run_generation` runs a whole generation (the non-streamed answer) and
  returns every output item, exactly those a stream would have rendered; it
  cancels the generation if the client disconnects;
* :func:`start_streamed_generation` waits for the first event, so a failure
  before anything was produced still gets a proper HTTP status, then
  :func:`stream_frames` renders the items as SSE frames through a
  :class:`StreamRenderer`, reporting a later failure in-band.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from fastapi import Request

from language_pipes.api.auth import JobSlot
from language_pipes.api.errors import APIError, current_request_id, finished_with_error, generation_failed
from language_pipes.api.output import OutputInterpreter, OutputItem
from language_pipes.api.sse import SSE_DONE, cancel_on_disconnect
from language_pipes.engine.types import Finished, GenerationEvent, GenerationRequest, TextDelta, TextGenerator

logger = logging.getLogger(__name__)


class GenerationEndedEarly(RuntimeError):
    """The engine's stream ended without its :class:`Finished` event (an engine bug)."""


@dataclass(frozen=True)
class Heartbeat:
    """Nothing new for a while: the stream is busy, not stuck."""


async def _next_event(events: AsyncIterator[GenerationEvent]) -> GenerationEvent | None:
    try:
        return await anext(events)
    except StopAsyncIteration:
        # Reported as None so the caller raises GenerationEndedEarly where it can report it.
        return None


async def _next_event_or_heartbeats(
    events: AsyncIterator[GenerationEvent], interval: float
) -> AsyncIterator[GenerationEvent | Heartbeat | None]:
    """A :class:`Heartbeat` for each quiet ``interval``, then the next event (None: the stream ended)."""
    pending = asyncio.ensure_future(_next_event(events))
    try:
        while not (await asyncio.wait({pending}, timeout=interval))[0]:
            yield Heartbeat()
    finally:
        if not pending.done():
            # The stream is being closed mid-wait: stop reading the engine before it is closed.
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending
    yield pending.result()


async def _abandon(events: AsyncIterator[GenerationEvent], slot: JobSlot | None) -> None:
    try:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
    finally:
        if slot is not None:
            slot.release()


@dataclass(frozen=True)
class StartedGeneration:
    """A stream whose first event has arrived and was not an error."""

    first_event: GenerationEvent
    rest: AsyncIterator[GenerationEvent]
    slot: JobSlot | None = None

    async def events(
        self, heartbeat_seconds: float | None = None
    ) -> AsyncIterator[GenerationEvent | Heartbeat]:
        """Every event, the first one included, ending with Finished; raises GenerationEndedEarly.

        With ``heartbeat_seconds``, a :class:`Heartbeat` stands for each quiet interval between events.
        """
        event: GenerationEvent | None = self.first_event
        while event is not None:
            yield event
            if isinstance(event, Finished):
                return
            if heartbeat_seconds is None:
                event = await _next_event(self.rest)
                continue
            async with contextlib.aclosing(_next_event_or_heartbeats(self.rest, heartbeat_seconds)) as waits:
                async for waited in waits:
                    if isinstance(waited, Heartbeat):
                        yield waited
                    else:
                        event = waited
        raise GenerationEndedEarly("the engine ended a sequence without a Finished event")

    async def close(self) -> None:
        """Cancel the sequence if it is still running and free its job slot (idempotent)."""
        await _abandon(self.rest, self.slot)


async def _collect(
    events: AsyncIterator[GenerationEvent], interpreter: OutputInterpreter
) -> list[OutputItem]:
    items: list[OutputItem] = []
    async for event in events:
        if isinstance(event, TextDelta):
            items.extend(interpreter.feed(event))
        elif event.reason == "error":
            raise finished_with_error(event)
        else:
            return items + interpreter.finish(event)
    raise GenerationEndedEarly("the engine ended a sequence without a Finished event")


async def run_generation(
    request: Request, generator: TextGenerator, generation: GenerationRequest, interpreter: OutputInterpreter
) -> list[OutputItem]:
    """Generate to the end and return every output item (the last is ``OutputEnded``).

    Cancels on client disconnect; raises APIError if the engine failed.
    """
    events = generator.generate(generation)
    try:
        return await cancel_on_disconnect(request, _collect(events, interpreter))
    finally:
        await events.aclose()


async def start_streamed_generation(
    request: Request, generator: TextGenerator, generation: GenerationRequest, slot: JobSlot | None = None
) -> StartedGeneration:
    """Start a stream and wait for its first event; an immediate failure raises its APIError.

    The returned stream holds ``slot`` until it is closed; if it never starts, the slot is freed here.
    """
    events = generator.generate(generation)
    try:
        first = await cancel_on_disconnect(request, _next_event(events))
        if first is None:
            raise GenerationEndedEarly("the engine ended a sequence without any event")
        if isinstance(first, Finished) and first.reason == "error":
            raise finished_with_error(first)
    except BaseException:
        await _abandon(events, slot)
        raise
    return StartedGeneration(first, events, slot)


class StreamRenderer(Protocol):
    """How one endpoint writes a stream: each method returns the SSE frames to send."""

    def opening(self) -> list[str]:
        """The frames before any output (a role chunk, ``response.created``)."""
        ...

    def render(self, items: list[OutputItem]) -> list[str]:
        """The frames of some output items (the last call ends with ``OutputEnded``)."""
        ...

    def heartbeat(self) -> list[str]:
        """The frames that show a busy stream is alive (may be none)."""
        ...

    def failed(self, error: APIError) -> list[str]:
        """The frames that end a stream which failed after it began."""
        ...


async def stream_frames(
    started: StartedGeneration,
    interpreter: OutputInterpreter,
    renderer: StreamRenderer,
    heartbeat_seconds: float | None = None,
) -> AsyncIterator[str]:
    """The renderer's opening, its frames of every output item (or of a failure), then ``[DONE]``."""
    for frame in renderer.opening():
        yield frame
    events = started.events(heartbeat_seconds)
    try:
        async for event in events:
            if isinstance(event, Heartbeat):
                frames = renderer.heartbeat()
            elif isinstance(event, TextDelta):
                frames = renderer.render(interpreter.feed(event))
            elif event.reason == "error":
                # The public message names the request id; the engine's text goes to the log.
                frames = renderer.failed(finished_with_error(event))
            else:
                frames = renderer.render(interpreter.finish(event))
            for frame in frames:
                yield frame
    except GenerationEndedEarly:
        # The engine ended without Finished (an engine bug); the headers are sent, so say it in-band.
        for frame in renderer.failed(generation_failed("the engine ended a sequence without Finished")):
            yield frame
    except Exception:
        # The headers are sent, so an engine failure can only be reported in-band.
        logger.exception("request %s: generation failed during a stream", current_request_id())
        for frame in renderer.failed(generation_failed("unexpected exception during a stream")):
            yield frame
    finally:
        # Stops a wait for the next event before the stream's owner closes the engine's generator.
        await events.aclose()
    yield SSE_DONE
