"""A route: the chain of segments, local or remote, that runs one model's layers after the end model's.

The engine only sees :class:`Route`; whether a hop is a function call or a
network round trip is the segment runner's business.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from language_pipes.models.segment import SegmentBatch
from language_pipes.vocabulary import SequenceId


class SegmentRunner(Protocol):
    """Runs layers ``[start, end)`` for a packed step and keeps their KV caches."""

    start: int
    end: int

    def forward(self, hidden: torch.Tensor, batch: SegmentBatch) -> torch.Tensor: ...

    def open(self, sequence_id: SequenceId, max_tokens: int | None = None) -> None:
        """Reserve room (KV memory for ``max_tokens``) for a new sequence; raises when the hop refuses it."""
        ...

    def release(self, sequence_id: SequenceId) -> None: ...


class Route:
    """Segments whose layer ranges chain from the end model's local layers to the last layer."""

    def __init__(self, segments: Sequence[SegmentRunner], name: str = "local") -> None:
        self.segments = tuple(segments)
        self.name = name
        # Set when a hop stops offering its layers (e.g. its node is leaving): sequences move elsewhere.
        self.retired = False
        # Sequences opened on this route and not yet released (this origin's share of the hops' load).
        self.open_sequences = 0

    @property
    def spans_machines(self) -> bool:
        """True when a hop runs on another machine, so micro-batches can keep both busy at once."""
        return any(getattr(segment, "on_other_machine", False) for segment in self.segments)

    def forward(self, hidden: torch.Tensor, batch: SegmentBatch) -> torch.Tensor:
        for segment in self.segments:
            hidden = segment.forward(hidden, batch)
        return hidden

    def open(self, sequence_id: SequenceId, max_tokens: int | None = None) -> None:
        """Reserve the sequence (up to ``max_tokens`` tokens) on every hop; raises the first hop's refusal."""
        self.open_sequences += 1
        for segment in self.segments:
            segment.open(sequence_id, max_tokens)

    def release(self, sequence_id: SequenceId) -> None:
        self.open_sequences = max(0, self.open_sequences - 1)
        for segment in self.segments:
            try:
                segment.release(sequence_id)
            except Exception:  # noqa: BLE001 - releasing is best effort; a lost node has no cache to free
                continue

    def __repr__(self) -> str:
        hops = ", ".join(f"{type(s).__name__}[{s.start}:{s.end}]" for s in self.segments)
        return f"Route({self.name}: {hops})"


class LocalHop:
    """Layers ``[start, end)`` of a segment hosted on this node, run by a function call."""

    def __init__(self, segment: LayerSegmentLike, start: int, end: int) -> None:
        self.segment = segment
        self.start, self.end = start, end

    def forward(self, hidden: torch.Tensor, batch: SegmentBatch) -> torch.Tensor:
        return self.segment.forward(hidden, batch, self.start, self.end)

    def open(self, sequence_id: SequenceId, max_tokens: int | None = None) -> None:
        self.segment.open(sequence_id, max_tokens)

    def release(self, sequence_id: SequenceId) -> None:
        self.segment.release(sequence_id)


class LayerSegmentLike(Protocol):
    def forward(self, hidden: torch.Tensor, batch: SegmentBatch, start: int, end: int) -> torch.Tensor: ...

    def open(self, sequence_id: SequenceId, max_tokens: int | None = None) -> None: ...

    def release(self, sequence_id: SequenceId) -> None: ...
