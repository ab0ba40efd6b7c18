"""The node's gauges for ``/metrics``: sequences queued and stepping, KV memory held and reserved.

:func:`model_states` is read at scrape time (on the API's event loop); every
number it reads is a thread-safe snapshot (queue sizes, segment locks).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from language_pipes.engine.scheduler import Scheduler
from language_pipes.metrics import ModelState
from language_pipes.models.segment import LayerSegment


class HostedParts(Protocol):
    """What :func:`model_states` reads of one hosted model (node.HostedModel)."""

    model_id: str
    segments: list[LayerSegment]
    scheduler: Scheduler | None


def model_states(hosted_models: Iterable[HostedParts]) -> list[ModelState]:
    states = []
    for hosted in hosted_models:
        scheduler = hosted.scheduler
        queued = 0 if scheduler is None else sum(lane.joining.qsize() for lane in scheduler.lanes)
        budgets = [segment.kv_budget_bytes for segment in hosted.segments]
        states.append(
            ModelState(
                model_id=str(hosted.model_id),
                active_sequences=0 if scheduler is None else scheduler.active_count,
                queued_sequences=queued,
                kv_cache_bytes=sum(segment.cache_nbytes() for segment in hosted.segments),
                kv_reserved_bytes=sum(
                    segment.reserved_tokens() * segment.kv_bytes_per_token for segment in hosted.segments
                ),
                kv_budget_bytes=(
                    sum(budget for budget in budgets if budget is not None)
                    if budgets and None not in budgets
                    else None
                ),
            )
        )
    return states
