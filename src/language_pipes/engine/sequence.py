"""One generation request as the origin tracks it: tokens, sampling state, output stream.

A sequence's KV caches hold its first ``fed`` tokens. Each step feeds the next
unfed tokens (a prefill chunk, or the one token sampled last); when it has fed
every token it knows, the step's last row yields the next token. Setting
``fed = 0`` replays the sequence through a new route. A speculative step feeds
drafted tokens after the last one; :meth:`Sequence.keep_drafts` counts the
accepted ones as fed (engine/speculation.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from language_pipes.engine.detokenize import IncrementalDetokenizer, StopMatcher
from language_pipes.engine.sampling import make_generator, pick_token
from language_pipes.engine.speculation import DraftControl, draft_tokens
from language_pipes.engine.types import (
    FailureKind,
    Finished,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    TextDelta,
)
from language_pipes.pipes.route import Route
from language_pipes.vocabulary import SequenceId


@dataclass
class Sequence:
    sequence_id: SequenceId
    request: GenerationRequest
    emit: Callable[[GenerationEvent], None]
    detokenizer: IncrementalDetokenizer
    route: Route | None = None
    generated: list[int] = field(default_factory=list)
    fed: int = 0
    fed_chunks: list[int] = field(default_factory=list)
    replay_chunks: list[int] = field(default_factory=list)
    replays: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: bool = False
    # Speculative decoding state (K, backoff, drafted / accepted counts); None: this sequence never drafts.
    speculation: DraftControl | None = None

    def __post_init__(self) -> None:
        self.stops = StopMatcher(self.request.stop)
        self.random = make_generator(self.request.sampling.seed)

    @property
    def tokens(self) -> list[int]:
        return self.request.prompt_token_ids + self.generated

    @property
    def unfed(self) -> int:
        return len(self.request.prompt_token_ids) + len(self.generated) - self.fed

    def next_chunk(self, budget: int, aligned_to: int | None = None) -> list[int]:
        """The tokens to feed next: up to ``budget``, or exactly the recorded chunk when replaying.

        With ``aligned_to``, chunks end at multiples of it (or at the last known
        token) whatever the budget, so the chunking never depends on other sequences.
        """
        tokens = self.tokens
        if self.replay_chunks:
            size = self.replay_chunks[0]
        elif aligned_to:
            size = min(aligned_to - self.fed % aligned_to, len(tokens) - self.fed)
        else:
            size = min(budget, len(tokens) - self.fed)
        return tokens[self.fed : self.fed + size]

    def advance(self, fed_tokens: int) -> None:
        """Record that a step fed ``fed_tokens`` more tokens into the route's caches."""
        self.fed += fed_tokens
        self.fed_chunks.append(fed_tokens)
        if self.replay_chunks:
            self.replay_chunks.pop(0)

    def keep_drafts(self, accepted: int) -> None:
        """The step that fed the last token also fed ``accepted`` drafts the model agreed with.

        They join that step's chunk, so a replay feeds exactly the accepted tokens in the same chunks.
        """
        self.fed += accepted
        self.fed_chunks[-1] += accepted

    def start_replay(self, route: Route) -> None:
        """Feed every token again through ``route``, in the chunks first used.

        Repeating the original chunking makes the rebuilt caches bit-identical,
        so greedy output continues exactly as it would have on the old route.
        """
        self.route = route
        self.replay_chunks = self.fed_chunks
        self.fed_chunks = []
        self.fed = 0

    def add_token(self, token_id: int, eos_token_ids: frozenset[int]) -> None:
        """Record a sampled token, stream its text, and finish on EOS, a stop string or the limit."""
        if token_id in eos_token_ids:
            self.finish("stop")
            return
        self.generated.append(token_id)
        if self.request.constraint is not None:
            self.request.constraint.accept(token_id)
        text, stopped = self.stops.push(self.detokenizer.push(token_id))
        if text:
            self.emit(TextDelta(text=text, token_ids=(token_id,)))
        if stopped:
            self.finish("stop")
        elif len(self.generated) >= self.request.max_new_tokens:
            self.finish("length")

    def pick(self, row_logits: torch.Tensor) -> int:
        """The next token from one row of logits, with this sequence's sampling, penalties and grammar."""
        allowed = self.allowed_tokens(row_logits.shape[-1])
        return pick_token(row_logits, self.request.sampling, self.generated, allowed, self.random)

    def take(self, token_id: int, eos_token_ids: frozenset[int], max_tokens: int) -> bool:
        """:meth:`add_token`, finishing at ``max_tokens`` (what every hop reserved); False once finished."""
        self.add_token(token_id, eos_token_ids)
        if not self.finished and len(self.tokens) >= max_tokens:
            self.finish("length")  # the context is full: one more token would pass every reservation
        return not self.finished

    def draft(self, limit: int, max_tokens: int) -> list[int]:
        """Tokens to verify after the last one: at most ``limit``, none past ``max_tokens`` or the budget."""
        if self.speculation is None:
            self.speculation = DraftControl(limit)
        tokens = self.tokens
        room = min(max_tokens - len(tokens), self.request.max_new_tokens - len(self.generated) - 1)
        return draft_tokens(self.speculation, tokens, self.request.constraint, room)

    def finish(
        self,
        reason: FinishReason,
        error: str | None = None,
        failure: FailureKind = "internal",
        public_error: str | None = None,
    ) -> None:
        if self.finished:
            return
        self.finished = True
        if reason != "error" and (rest := self.stops.flush()):
            self.emit(TextDelta(text=rest, token_ids=()))
        self.emit(
            Finished(
                reason=reason,
                prompt_tokens=len(self.request.prompt_token_ids),
                completion_tokens=len(self.generated),
                error=error,
                failure=failure,
                public_error=public_error,
                drafted_tokens=self.speculation.drafted if self.speculation else 0,
                accepted_tokens=self.speculation.accepted if self.speculation else 0,
            )
        )

    def allowed_tokens(self, vocab_size: int) -> torch.Tensor | None:
        constraint = self.request.constraint
        return None if constraint is None else constraint.allowed_tokens(vocab_size)
