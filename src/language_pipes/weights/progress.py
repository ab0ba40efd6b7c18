"""How far a model's fetch from peers has got: bytes, rate and source peers.

One :class:`FetchProgress` per model feeds the console bar (tqdm, in
:mod:`language_pipes.weights.fetch`), the TUI's Models page and the log.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

MEGABYTE = 1_000_000


@dataclass
class FetchProgress:
    """How far one model's fetch has got; shown on the console, the TUI and the node's status."""

    model_id: str
    total_bytes: int = 0
    done_bytes: int = 0
    reused_bytes: int = 0
    by_peer: Counter[str] = field(default_factory=Counter)
    bad_by_peer: Counter[str] = field(default_factory=Counter)
    state: str = "asking peers"
    started: float = field(default_factory=time.monotonic)

    @property
    def rate_bytes_per_s(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done_bytes / elapsed if elapsed > 0 else 0.0

    def sources(self) -> str:
        """``from a (3.1 MB), b (2.9 MB)``: the peers that sent verified bytes, with how many."""
        peers = ", ".join(
            f"{peer} ({count / MEGABYTE:.1f} MB)" for peer, count in sorted(self.by_peer.items())
        )
        bad = ", ".join(f"{peer} ({count})" for peer, count in sorted(self.bad_by_peer.items()))
        return f"from {peers or '-'}" + (f"; bad pieces from {bad}" if bad else "")

    def line(self) -> str:
        return (
            f"{self.model_id}: {self.state}, {(self.done_bytes + self.reused_bytes) / MEGABYTE:.1f}"
            f"/{self.total_bytes / MEGABYTE:.1f} MB at {self.rate_bytes_per_s / MEGABYTE:.1f} MB/s"
            f" {self.sources()}"
        )
