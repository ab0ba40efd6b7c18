"""The origin side of one model as the API sees it: chat encoding and async token streams.

:class:`ModelGenerator` implements ``TextGenerator`` (engine/types.py). Each
``generate`` call creates a :class:`Sequence`, hands it to the scheduler thread,
and relays the events the thread emits into the caller's event loop. Closing
the async generator cancels the sequence.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

from language_pipes.engine.detokenize import IncrementalDetokenizer
from language_pipes.engine.scheduler import Scheduler
from language_pipes.engine.sequence import Sequence
from language_pipes.engine.types import (
    Finished,
    GenerationEvent,
    GenerationRequest,
)
from language_pipes.models.end_model import EndModel
from language_pipes.vocabulary import SequenceId


class ModelGenerator:
    """Generates text for one end model through its scheduler."""

    def __init__(self, end_model: EndModel, scheduler: Scheduler) -> None:
        self.end_model = end_model
        self.scheduler = scheduler
        self.model_id = end_model.model_id
        self.context_length = end_model.context_length
        self.tokenizer = end_model.tokenizer

    def encode_chat(self, messages: list[dict[str, object]]) -> list[int]:
        return self.end_model.encode_chat(messages)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[GenerationEvent] = asyncio.Queue()

        def emit(event: GenerationEvent) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the caller's event loop is closed: nobody listens, so stop generating
                sequence.cancelled.set()

        sequence = Sequence(
            sequence_id=SequenceId(uuid.uuid4().hex),
            request=request,
            emit=emit,
            detokenizer=IncrementalDetokenizer(self.tokenizer),
        )
        self.scheduler.submit(sequence)
        try:
            while True:
                event = await events.get()
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            sequence.cancelled.set()
