"""The chaos run's settings, events and report (scripts/chaos.py), as plain dataclasses that become JSON."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

Layout = Literal["split", "full"]
ChaosAction = Literal["kill", "restart", "freeze", "thaw", "slow", "unslow"]
# Disturbances the loop tries once each first, in this order (restart follows from kill).
DISTURBANCES: tuple[ChaosAction, ...] = ("freeze", "slow", "kill")


@dataclass(frozen=True)
class ChaosSettings:
    streams: int = 8
    seconds: float = 120.0
    seed: int = 1
    layer_nodes: int = 4
    layout: Layout = "split"
    max_tokens: int = 32
    kill_every_min: float = 4.0
    kill_every_max: float = 10.0
    hang_seconds: float = 60.0
    freeze_seconds: float = 8.0
    slow_seconds: float = 10.0


@dataclass(frozen=True)
class ChaosEvent:
    at_seconds: float
    action: ChaosAction
    node: str
    layers: str


@dataclass
class RequestRecord:
    stream: int
    started_at: float
    prompt_index: int
    outcome: str
    matches_reference: bool | None
    seconds: float
    finish_reason: str | None
    error: str | None
    text: str


@dataclass
class ChaosReport:
    settings: ChaosSettings
    reference: dict[int, str] = field(default_factory=dict)
    events: list[ChaosEvent] = field(default_factory=list)
    requests: list[RequestRecord] = field(default_factory=list)

    def count(self, predicate: Callable[[RequestRecord], bool]) -> int:
        return sum(1 for request in self.requests if predicate(request))

    def summary(self) -> dict[str, int]:
        return {
            "started": len(self.requests),
            "completed": self.count(lambda r: r.outcome == "completed"),
            "failed": self.count(lambda r: r.outcome == "failed"),
            "hung": self.count(lambda r: r.outcome == "hung"),
            "mismatched": self.count(lambda r: r.matches_reference is False),
            "kills": sum(1 for e in self.events if e.action == "kill"),
            "restarts": sum(1 for e in self.events if e.action == "restart"),
            "freezes": sum(1 for e in self.events if e.action == "freeze"),
            "slowdowns": sum(1 for e in self.events if e.action == "slow"),
        }

    @property
    def passed(self) -> bool:
        summary = self.summary()
        return summary["failed"] == 0 and summary["hung"] == 0 and summary["mismatched"] == 0

    def to_json(self) -> dict[str, object]:
        return {
            "settings": asdict(self.settings),
            "summary": self.summary(),
            "passed": self.passed,
            "reference": {str(index): text for index, text in self.reference.items()},
            "events": [asdict(event) for event in self.events],
            "requests": [asdict(request) for request in self.requests],
        }
