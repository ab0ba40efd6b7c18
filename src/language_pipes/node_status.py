"""A read-only snapshot of a running node: what it hosts, what it serves, who it knows, what it runs.

The terminal UI redraws from :func:`node_status` instead of reaching into the
node's parts (``node.models[...].end_model.local_layers.end``). Taking a
snapshot builds no route and changes nothing: it asks the node the same
questions ``/v1/models`` asks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from language_pipes.network.types import NodeId, NodeRecord
from language_pipes.vocabulary import ModelId

if TYPE_CHECKING:
    from language_pipes.node import Node


@dataclass(frozen=True)
class ActiveJob:
    """One request in flight on this node (this node is its origin)."""

    sequence_id: str
    model_id: str
    prompt_tokens: int
    prefilled_tokens: int
    generated_tokens: int
    # Speculative decoding: tokens drafted for this request so far, and drafts the model accepted.
    drafted_tokens: int = 0
    accepted_tokens: int = 0

    @property
    def prefill_fraction(self) -> float:
        """Share of the prompt already fed through the pipe (1.0 once decoding)."""
        if self.prompt_tokens == 0:
            return 1.0
        return min(1.0, self.prefilled_tokens / self.prompt_tokens)


@dataclass(frozen=True)
class HostedModelStatus:
    """One model this node holds some of."""

    model_id: ModelId
    total_layers: int
    # Layer ranges [start, end) of the segments hosted here, in layer order.
    segments: tuple[tuple[int, int], ...]
    # The first layer after the end model's local layers; None when only layers are hosted here.
    first_shared_layer: int | None
    # An end model here and a complete pipe right now.
    servable: bool

    @property
    def has_end_model(self) -> bool:
        return self.first_shared_layer is not None


@dataclass(frozen=True)
class NodeStatus:
    node_id: NodeId
    peer_port: int
    models: tuple[HostedModelStatus, ...]
    # This node's record and those of every live peer.
    records: Mapping[NodeId, NodeRecord]

    def model(self, model_id: str) -> HostedModelStatus | None:
        return next((model for model in self.models if model.model_id == model_id), None)


def node_status(node: Node) -> NodeStatus:
    """What ``node`` hosts, serves and knows right now."""
    servable = set(node.servable_models())
    models = tuple(
        HostedModelStatus(
            model_id=hosted.model_id,
            total_layers=hosted.source.num_layers,
            segments=tuple(sorted((segment.start, segment.end) for segment in hosted.segments)),
            first_shared_layer=None if hosted.end_model is None else hosted.end_model.shared_layers.start,
            servable=hosted.model_id in servable,
        )
        for hosted in list(node.models.values())
    )
    return NodeStatus(node.node_id, node.network.peer_port, models, dict(node.network.records()))


def active_jobs(node: Node) -> list[ActiveJob]:
    """Requests in flight on ``node``'s schedulers, oldest first."""
    jobs: list[ActiveJob] = []
    for hosted in list(node.models.values()):
        if hosted.scheduler is None:
            continue
        # The scheduler has no public snapshot of its sequences yet; copy the list it swaps whole.
        for sequence in hosted.scheduler.active_sequences():
            if sequence.finished:
                continue
            prompt = len(sequence.request.prompt_token_ids)
            drafts = sequence.speculation
            jobs.append(
                ActiveJob(
                    sequence_id=str(sequence.sequence_id),
                    model_id=str(hosted.model_id),
                    prompt_tokens=prompt,
                    prefilled_tokens=min(sequence.fed, prompt),
                    generated_tokens=len(sequence.generated),
                    drafted_tokens=drafts.drafted if drafts is not None else 0,
                    accepted_tokens=drafts.accepted if drafts is not None else 0,
                )
            )
    return jobs
