"""Plain data that crosses the boundary between the API and the generation engine.

The API turns an HTTP body into a :class:`GenerationRequest`; the engine answers
with a stream of :class:`TextDelta` events ending in one :class:`Finished`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch

from language_pipes.vocabulary import ModelId

FinishReason = Literal["stop", "length", "error"]

# Why a sequence ended with reason "error", in the engine's words; the API maps it to an HTTP status
# (api/errors.py): "internal" is a fault here, "unavailable" means no working pipe or a refusal,
# "timeout" a pipe that did not answer in time.
FailureKind = Literal["internal", "unavailable", "timeout"]

# Temperatures below this sample greedily: dividing logits by less only rounds to argmax anyway.
GREEDY_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is picked from the logits (see the README's sampling section)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE or self.top_k == 1


class TokenConstraint(Protocol):
    """Restricts which tokens may come next (constrained decoding, applied on the origin).

    The engine calls :meth:`allowed_tokens` before sampling each token and
    :meth:`accept` with the token it picked. A constraint that is finished only
    allows end-of-sequence tokens.
    """

    def allowed_tokens(self, vocab_size: int) -> torch.Tensor | None:
        """A bool tensor of shape ``[vocab_size]`` (True = allowed), or None for no restriction."""
        ...

    def accept(self, token_id: int) -> None: ...

    def is_finished(self) -> bool: ...


@dataclass
class GenerationRequest:
    """One sequence to generate, owned by the origin node for its whole life."""

    prompt_token_ids: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_new_tokens: int = 1000
    stop: tuple[str, ...] = ()
    constraint: TokenConstraint | None = None


@dataclass(frozen=True)
class TextDelta:
    """New text produced by one or more tokens; concatenating every delta gives the full text."""

    text: str
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class Finished:
    """The last event of a sequence."""

    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None
    # What kind of failure it was when reason == "error" (the API chooses the status from it).
    failure: FailureKind = "internal"
    # A message this node wrote for the client (never a peer's text); `error` stays in the log.
    public_error: str | None = None
    # Speculative decoding (engine/speculation.py): tokens drafted, and drafts the model accepted.
    drafted_tokens: int = 0
    accepted_tokens: int = 0


GenerationEvent = TextDelta | Finished


class TextGenerator(Protocol):
    """What the API needs from the origin side of one model.

    ``generate`` is an async generator: it yields :class:`TextDelta` events and
    ends with exactly one :class:`Finished`. Closing it early (``aclose()``,
    e.g. because the client disconnected) cancels the sequence and frees its
    caches on every node within one step.
    """

    model_id: str
    context_length: int
    tokenizer: object  # a transformers PreTrainedTokenizerBase

    def encode_chat(self, messages: list[dict[str, object]]) -> list[int]:
        """Render messages with the model's chat template (generation prompt added) and tokenize."""
        ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]: ...


class ModelUnknownError(LookupError):
    """The model id is not hosted as an end model on this node (API: 404)."""


class ModelUnavailableError(RuntimeError):
    """The end model is here but no complete pipe serves it right now (API: 503)."""


class ModelCatalog(Protocol):
    """The node as the API sees it: which models it can serve, and their generators."""

    def servable_models(self) -> list[ModelId]:
        """End models hosted here that have a complete, loaded pipe right now."""
        ...

    def generator(self, model_id: str) -> TextGenerator:
        """Raises ModelUnknownError or ModelUnavailableError."""
        ...
