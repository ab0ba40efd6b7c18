"""A scripted stand-in for the generation engine, for unit tests of the HTTP layer only.

:class:`ScriptedGenerator` "tokenizes" a chat as one token per character and
answers every request with the deltas it was given; it records the requests
it saw and whether each generation was closed, and can hold a generation open
until a test releases it (to test limits and disconnects).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from language_pipes.engine.types import (
    FailureKind,
    Finished,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    ModelUnavailableError,
    ModelUnknownError,
    TextDelta,
)
from language_pipes.vocabulary import ModelId


@dataclass
class GenerationRecord:
    """What happened to one generation."""

    request: GenerationRequest
    started: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    completed: bool = False


class ScriptedGenerator:
    """A TextGenerator that yields scripted deltas."""

    def __init__(
        self,
        model_id: str,
        pieces: list[str],
        *,
        context_length: int = 4096,
        reason: FinishReason = "stop",
        error: str | None = None,
        failure: FailureKind = "internal",
        fail_after: int | None = None,
        delay_seconds: float = 0.0,
    ) -> None:
        self.model_id = model_id
        self.pieces = pieces
        self.context_length = context_length
        self.reason = reason
        self.error = error
        self.failure = failure
        self.fail_after = fail_after
        self.delay_seconds = delay_seconds
        self.tokenizer = object()
        self.records: list[GenerationRecord] = []
        self.gate: asyncio.Event | None = None  # when set to an Event, each generation waits for it
        self.last_messages: list[dict[str, object]] = []

    def encode_chat(self, messages: list[dict[str, object]]) -> list[int]:
        self.last_messages = messages
        rendered = "".join(f"<{m['role']}>{m['content']}" for m in messages)
        return [ord(character) for character in rendered]

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        record = GenerationRecord(request)
        self.records.append(record)
        return self._run(record)

    async def _run(self, record: GenerationRecord) -> AsyncIterator[GenerationEvent]:
        record.started.set()
        produced = 0
        try:
            if self.gate is not None:
                await self.gate.wait()
            for piece in self.pieces[: record.request.max_new_tokens]:
                if self.fail_after is not None and produced == self.fail_after:
                    yield Finished(
                        "error", len(record.request.prompt_token_ids), produced, self.error, "internal"
                    )
                    return
                if self.delay_seconds:
                    await asyncio.sleep(self.delay_seconds)
                produced += 1
                yield TextDelta(piece, (produced,))
            reason = self.reason
            if len(self.pieces) > record.request.max_new_tokens:
                reason = "length"
            record.completed = True
            yield Finished(reason, len(record.request.prompt_token_ids), produced, self.error, self.failure)
        finally:
            record.closed.set()


class ScriptedCatalog:
    """A ModelCatalog over scripted generators; ``unavailable`` ids raise ModelUnavailableError."""

    def __init__(self, *generators: ScriptedGenerator, unavailable: tuple[str, ...] = ()) -> None:
        self.generators = {generator.model_id: generator for generator in generators}
        self.unavailable = unavailable

    def servable_models(self) -> list[ModelId]:
        return [ModelId(model_id) for model_id in self.generators]

    def generator(self, model_id: str) -> ScriptedGenerator:
        if model_id in self.unavailable:
            raise ModelUnavailableError(model_id)
        if model_id not in self.generators:
            raise ModelUnknownError(model_id)
        return self.generators[model_id]
