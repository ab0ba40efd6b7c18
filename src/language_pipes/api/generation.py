"""Reading the engine, the one step every generating endpoint shares.

Both endpoints turn their body into a :class:`GenerationRequest`, read the
engine's events here, and render them their own way (chat chunks, Responses
events). Two ways of reading, both raising :class:`APIError` on failure:

* :func:`run_generation` reads a whole generation (the non-streamed answer),
  handing each delta to the endpoint's interpreter as it comes, exactly as a
  stream would, and cancels it if the client disconnects;
* :func:`start_streamed_generation` waits for the first event, so a failure
  before anything was produced still gets a proper HTTP status, then hands
  back a :class:`StartedGeneration` whose :meth:`~StartedGeneration.events`
  yields every event up to and including :class:`Finished`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fastapi import Request

from language_pipes.api.auth import JobSlot
from language_pipes.api.errors import finished_with_error, generation_failed
from language_pipes.api.sse import cancel_on_disconnect, sse_event
from language_pipes.engine.types import (
    Finished,
    GenerationEvent,
    GenerationRequest,
    TextDelta,
    TextGenerator,
)


class GenerationEndedEarly(RuntimeError):
    """The engine's stream ended without its :class:`Finished` event (an engine bug)."""


@dataclass(frozen=True)
class GenerationOutcome:
    """A whole non-streamed generation."""

    text: str
    finished: Finished


async def _next_event(events: AsyncIterator[GenerationEvent]) -> GenerationEvent | None:
    try:
        return await anext(events)
    except StopAsyncIteration:
        # Reported as None so the caller raises GenerationEndedEarly where it can report it.
        return None


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

    async def events(self) -> AsyncIterator[GenerationEvent]:
        """Every event, the first one included, ending with Finished; raises GenerationEndedEarly."""
        event: GenerationEvent | None = self.first_event
        while event is not None:
            yield event
            if isinstance(event, Finished):
                return
            event = await _next_event(self.rest)
        raise GenerationEndedEarly("the engine ended a sequence without a Finished event")

    async def close(self) -> None:
        """Cancel the sequence if it is still running and free its job slot (idempotent)."""
        await _abandon(self.rest, self.slot)


async def _collect(
    events: AsyncIterator[GenerationEvent], on_delta: Callable[[TextDelta], object] | None
) -> GenerationOutcome:
    pieces: list[str] = []
    async for event in events:
        if isinstance(event, TextDelta):
            pieces.append(event.text)
            if on_delta is not None:
                on_delta(event)
        else:
            return GenerationOutcome("".join(pieces), event)
    raise GenerationEndedEarly("the engine ended a sequence without a Finished event")


async def run_generation(
    request: Request,
    generator: TextGenerator,
    generation: GenerationRequest,
    on_delta: Callable[[TextDelta], object] | None = None,
) -> GenerationOutcome:
    """Generate to the end; cancels on client disconnect; raises APIError if the engine failed."""
    events = generator.generate(generation)
    try:
        outcome = await cancel_on_disconnect(request, _collect(events, on_delta))
    finally:
        await events.aclose()
    if outcome.finished.reason == "error":
        raise finished_with_error(outcome.finished)
    return outcome


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


def error_event(message: str, status: int = 500) -> str:
    """The SSE frame that ends a chat stream which failed after it began."""
    return sse_event(generation_failed(message, status).body())
