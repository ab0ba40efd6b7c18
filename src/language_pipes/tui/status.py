"""What the dashboard shows, computed from plain data: readiness, pipes, job rates, resources.

Pure functions over the config values, the network's node records and the
node's hosted models, so they are testable without a terminal or a network.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psutil

from language_pipes.metrics import HopLatency
from language_pipes.network.types import HostedSegment, NodeRecord

GIGABYTE = 1_000_000_000

_PROBLEM_HINTS = {
    "node_id: required key is missing": "set a node id (Network > Configure)",
}


def missing_before_serving(
    problems: Iterable[str],
    values: Mapping[str, Any],
    network_running: bool,
    job_server_running: bool,
    incomplete_models: Iterable[str] = (),
) -> list[str]:
    """Short to-do lines: what stops this node from serving requests right now."""
    missing = [_PROBLEM_HINTS.get(problem, f"fix the configuration: {problem}") for problem in problems]
    if not values.get("end_models"):
        missing.append("add an end model (Models > End Models) so this node can serve requests")
    if "job_port" not in values:
        missing.append("set a job port (Jobs > Server)")
    if not network_running:
        missing.append("start the network server (Home)")
    elif not job_server_running and "job_port" in values:
        missing.append("start the job server (Home or Jobs > Server)")
    missing += [f"no complete pipe for model {model_id}" for model_id in incomplete_models]
    return missing


def describe_segment(segment: HostedSegment) -> str:
    """``org/model 1-15 int8``: the layers a record announces, their data type and state."""
    text = f"{segment.model_id} {segment.start_layer}-{segment.end_layer - 1}"
    if segment.data_type is not None:
        text += f" {segment.data_type}"
    if segment.private:
        text += " (end model's own)"
    return text if segment.loaded else f"{text} (loading)"


@dataclass(frozen=True)
class PipeSegment:
    node_id: str
    start_layer: int
    end_layer: int
    loaded: bool


@dataclass(frozen=True)
class PipeView:
    """Everything the network holds of one model, in layer order."""

    model_id: str
    segments: tuple[PipeSegment, ...]
    end_model_nodes: tuple[str, ...]
    total_layers: int | None
    first_shared_layer: int
    complete: bool | None  # None: this node cannot tell (it does not know the layer count)

    @property
    def loading(self) -> bool:
        return any(not segment.loaded for segment in self.segments)

    def gaps(self) -> list[tuple[int, int]]:
        """Layer ranges ``[start, end)`` after the end model's local layers that nobody hosts."""
        if self.total_layers is None:
            return []
        found: list[tuple[int, int]] = []
        reached = self.first_shared_layer
        for segment in sorted(self.segments, key=lambda s: s.start_layer):
            if segment.start_layer > reached:
                found.append((reached, segment.start_layer))
            reached = max(reached, segment.end_layer)
        if reached < self.total_layers:
            found.append((reached, self.total_layers))
        return found


def pipe_views(
    records: Mapping[str, NodeRecord],
    total_layers: Mapping[str, int],
    first_shared_layer: Mapping[str, int],
    complete: Mapping[str, bool],
) -> list[PipeView]:
    """One view per model seen anywhere in the network, sorted by model id."""
    segments: dict[str, list[PipeSegment]] = {}
    end_nodes: dict[str, list[str]] = {}
    for record in records.values():
        for segment in record.segments:
            segments.setdefault(segment.model_id, []).append(
                PipeSegment(str(record.node_id), segment.start_layer, segment.end_layer, segment.loaded)
            )
        for model_id in record.end_models:
            end_nodes.setdefault(model_id, []).append(str(record.node_id))
    views = []
    for model_id in sorted(set(segments) | set(end_nodes)):
        views.append(
            PipeView(
                model_id=model_id,
                segments=tuple(sorted(segments.get(model_id, []), key=lambda s: (s.start_layer, s.node_id))),
                end_model_nodes=tuple(sorted(end_nodes.get(model_id, []))),
                total_layers=total_layers.get(model_id),
                first_shared_layer=first_shared_layer.get(model_id, 1),
                complete=complete.get(model_id),
            )
        )
    return views


def draw_pipe(view: PipeView, width: int = 60) -> str:
    """A one-line bar of the model's layers: one letter per hosting node, ``·`` for a gap."""
    total = view.total_layers or max((s.end_layer for s in view.segments), default=0)
    if total == 0:
        return ""
    cells = ["·"] * total
    for layer in range(min(view.first_shared_layer, total)):
        cells[layer] = "E"
    for segment in view.segments:
        mark = segment.node_id[:1].upper() if segment.loaded else "~"
        for layer in range(segment.start_layer, min(segment.end_layer, total)):
            cells[layer] = mark
    scale = max(1, -(-total // width))
    return "".join(cells[::scale])


# A hop not stepped for this long shows its last figures as idle (they may be out of date).
HOP_IDLE_AFTER_S = 30.0


def hop_latency_text(latency: HopLatency | None, now: float | None = None) -> str:
    """How long a step to one peer takes, e.g. ``step 21.4 ms (last 20.1 ms)``; empty if never stepped."""
    if latency is None:
        return ""
    now = time.monotonic() if now is None else now
    text = f"step {latency.average_s * 1000:.1f} ms (last {latency.last_s * 1000:.1f} ms)"
    if now - latency.updated_at > HOP_IDLE_AFTER_S:
        text += ", idle"
    return text


@dataclass
class JobRates:
    """Tokens per second of each job, measured between dashboard refreshes."""

    first_token_at: dict[str, tuple[float, int]] = field(default_factory=dict)

    def rate(self, sequence_id: str, generated: int, now: float | None = None) -> float | None:
        now = time.monotonic() if now is None else now
        if generated == 0:
            return None
        first = self.first_token_at.setdefault(sequence_id, (now, generated))
        elapsed = now - first[0]
        if elapsed <= 0:
            return None
        return (generated - first[1]) / elapsed

    def forget_except(self, live: Iterable[str]) -> None:
        keep = set(live)
        for sequence_id in [s for s in self.first_token_at if s not in keep]:
            del self.first_token_at[sequence_id]


def acceptance_label(drafted: int, accepted: int) -> str:
    """A request's speculative drafts: accepted of drafted and the share, or "-" before any draft."""
    if drafted <= 0:
        return "-"
    return f"{accepted}/{drafted} ({accepted / drafted:.0%})"


def resource_lines() -> list[str]:
    """RAM, and GPU memory when torch is already loaded and sees a GPU."""
    memory = psutil.virtual_memory()
    lines = [
        f"RAM: {memory.used / GIGABYTE:.1f} GB used of {memory.total / GIGABYTE:.1f} GB "
        f"({memory.available / GIGABYTE:.1f} GB available)",
        f"CPU cores: {psutil.cpu_count()} ({psutil.cpu_percent(interval=None):.0f}% busy)",
    ]
    torch = sys.modules.get("torch")  # never import torch just to look: it takes seconds
    if torch is not None and torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            name = torch.cuda.get_device_name(index)
            lines.append(
                f"GPU {index} ({name}): {(total - free) / GIGABYTE:.1f} GB used of {total / GIGABYTE:.1f} GB"
            )
    elif torch is None:
        lines.append("GPU: checked when the network server starts")
    else:
        lines.append("GPU: none")
    return lines
