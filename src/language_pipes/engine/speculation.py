"""Speculative decoding through the pipe: drafts from the conversation itself, verified in one step.

A pipe's single-stream decode pays every hop's round trip once per token.
The origin sees the prompt and every generated token, so it can guess the
next few without a second model: text that rewrites, quotes or edits its
input repeats n-grams of that input (prompt lookup), and constrained output
has tokens its grammar forces (llguidance's fast-forward tokens). A step then
feeds the sequence's last token plus up to K drafted tokens, marked as a
decode run: every stage computes each of those rows exactly as the one-row
decode step it stands for (attention row by row; one row at a time through
the linear layers where their kernels round a lone row differently,
models/segment.py), and the origin keeps the longest prefix the model agrees
with, plus the model's own next token. So greedy output is token-identical
with and without speculation: for a lone request in default mode (equal to
transformers in one process), and under any load in batch-invariant mode.

Acceptance draws exactly what plain decoding draws: each verified row is
sampled with the sequence's own sampler (penalties, grammar mask, seed and
all) and a draft token is accepted when the sampled token equals it. For a
deterministic draft this is the standard speculative-sampling rule (accept
with probability p(x); on rejection the token is drawn from p with x
removed, renormalised), and because one draw is made per emitted token, in
order, a seeded request yields the same tokens with or without speculation
whenever the logits are the same (as above).

Rejected positions stay in the KV caches only until the next step: it starts
at the first rejected position, and every segment (the origin's local layers
and each hop) truncates a cache that is longer than a step's start position
(models/segment.py, only for the sequence's own origin: pipes/worker.py).
Replays after a node loss feed only accepted tokens. Layers with a recurrent
state (models/recurrent.py) cannot be cut back, so models with them do not
speculate.

K adapts per sequence: it grows while every draft is accepted, shrinks to
what was accepted otherwise, and a sequence whose drafts keep failing stops
drafting for a while (exponentially longer each time). A step that already
decodes :data:`BUSY_BATCH` sequences drafts nothing: their rows keep the pipe
busy, and drafts would only cost compute.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

# The longest and shortest n-gram of the current tail looked up in the sequence's history.
NGRAM_MAX = 4
NGRAM_MIN = 2
# Default K limit (config `speculation_max_tokens`): on a bf16 AVX2 CPU each extra row of a step
# costs a good part of a one-row step, so long drafts pay only when nearly all of them are accepted.
DEFAULT_MAX_DRAFT = 6
# K a sequence starts with, and what a fully accepted draft adds to it.
FIRST_DRAFT = 2
GROWTH = 2
# Steps a sequence waits before drafting again after consecutive failed drafts: 2, 4, 8, ... up to this.
MAX_COOLDOWN_STEPS = 32
# A step decoding this many sequences drafts for none of them.
BUSY_BATCH = 4


@dataclass(frozen=True)
class SpeculationSettings:
    """Node config `speculation` (on/off) and `speculation_max_tokens` (the K limit)."""

    enabled: bool = False
    max_tokens: int = DEFAULT_MAX_DRAFT
    busy_batch: int = BUSY_BATCH


class PromptLookup:
    """An n-gram index over one sequence's tokens, extended as tokens arrive (they are never taken back).

    ``propose`` looks up the longest tail n-gram (NGRAM_MAX down to NGRAM_MIN
    tokens) that occurred before and offers the tokens that followed its most
    recent earlier occurrence.
    """

    def __init__(self, ngram_max: int = NGRAM_MAX, ngram_min: int = NGRAM_MIN) -> None:
        self.ngram_max, self.ngram_min = ngram_max, ngram_min
        self._last_end: dict[tuple[int, ...], int] = {}
        self._indexed = 0  # n-grams ending before this position are in the index

    def propose(self, tokens: list[int], count: int) -> list[int]:
        last = len(tokens) - 1
        if count <= 0 or last < self.ngram_min:
            return []
        for end in range(self._indexed, last):  # every n-gram except those ending at the tail itself
            for size in range(self.ngram_min, min(self.ngram_max, end + 1) + 1):
                self._last_end[tuple(tokens[end - size + 1 : end + 1])] = end
        self._indexed = max(self._indexed, last)
        for size in range(min(self.ngram_max, last), self.ngram_min - 1, -1):
            end = self._last_end.get(tuple(tokens[last - size + 1 :]))
            if end is not None:
                return tokens[end + 1 : min(end + 1 + count, last + 1)]
        return []


@dataclass
class DraftControl:
    """One sequence's K, its backoff, and its statistics (tokens drafted, drafts accepted)."""

    limit: int
    k: int = FIRST_DRAFT
    cooldown: int = 0
    failures: int = 0
    drafted: int = 0
    accepted: int = 0
    lookup: PromptLookup = field(default_factory=PromptLookup)

    def __post_init__(self) -> None:
        self.k = max(1, min(self.k, self.limit))

    def wanted(self) -> int:
        """How many tokens to draft now (0 while cooling down after failed drafts)."""
        if self.cooldown > 0:
            self.cooldown -= 1
            return 0
        return self.k

    def record(self, drafted: int, accepted: int) -> None:
        """Count one verified draft and adapt K to it."""
        self.drafted += drafted
        self.accepted += accepted
        self.adapt(drafted, accepted)

    def adapt(self, drafted: int, accepted: int) -> None:
        if accepted == drafted:
            self.k = min(self.limit, self.k + GROWTH)
            self.failures = 0
        elif accepted == 0:
            self.k = 1
            self.failures += 1
            self.cooldown = min(MAX_COOLDOWN_STEPS, 2**self.failures) if self.failures > 1 else 0
        else:
            self.k = max(1, accepted + 1)
            self.failures = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


def draft_tokens(control: DraftControl, tokens: list[int], constraint: object | None, room: int) -> list[int]:
    """Up to ``min(K, room)`` guessed next tokens: grammar-forced ones first, else a prompt-lookup match.

    With a grammar, an n-gram draft is cut where the grammar would refuse it
    (a refused draft token could never be accepted anyway).
    """
    count = min(control.wanted(), room)
    if count <= 0:
        return []
    if constraint is not None:
        forced = getattr(constraint, "forced_tokens", None)
        if forced is not None and (tokens_forced := list(forced())[:count]):
            return tokens_forced
    draft = control.lookup.propose(tokens, count)
    if draft and constraint is not None:
        valid_prefix = getattr(constraint, "valid_prefix", None)
        draft = draft[: valid_prefix(draft)] if valid_prefix is not None else []
    return draft


def accept_longest_prefix(
    draft: list[int],
    rows: Iterable[torch.Tensor],
    pick: Callable[[torch.Tensor], int],
    emit: Callable[[int], bool],
) -> int:
    """Verify ``draft`` against the logits ``rows`` (``len(draft) + 1`` of them); returns drafts accepted.

    Row ``i`` holds the logits after the sequence's last token and ``draft[:i]``.
    ``pick`` samples a row with the sequence's state as it is now, ``emit``
    records the picked token and says whether the sequence goes on. The first
    row whose token differs from the draft ends the step; its token is the
    model's own, so every step emits at least one token.
    """
    for index, row in enumerate(rows):
        token = pick(row)
        matched = index < len(draft) and token == draft[index]
        if not emit(token) or not matched:
            return index + int(matched)
    return len(draft)


def supports_speculation(config: object) -> bool:
    """False for models with recurrent-state (linear-attention) layers: their state cannot roll back."""
    for candidate in (config, getattr(config, "text_config", None)):
        if "linear_attention" in (getattr(candidate, "layer_types", None) or ()):
            return False
    return True
