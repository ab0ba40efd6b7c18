"""The node's /metrics gauges read real layer segments: KV bytes held, reserved and budgeted."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from language_pipes.engine.scheduler import Scheduler
from language_pipes.models.end_model import EndModel
from language_pipes.models.segment import LayerSegment, SegmentBatch
from language_pipes.node_metrics import model_states
from language_pipes.vocabulary import SequenceId
from support.tiny_models import build_tiny_model


@dataclass
class Hosted:
    model_id: str
    segments: list[LayerSegment] = field(default_factory=list)
    scheduler: Scheduler | None = None


def test_kv_gauges_follow_a_real_segment(tmp_path: Path) -> None:
    folder = build_tiny_model("llama", tmp_path / "llama")
    end = EndModel("tiny", folder, num_local_layers=1, dtype=torch.float32)
    segment = LayerSegment(end.source, 1, end.num_layers, torch.float32, torch.device("cpu"))
    segment.kv_budget_bytes = 64 * segment.kv_bytes_per_token
    hosted = Hosted("tiny", [segment])

    (idle,) = model_states([hosted])
    assert (idle.kv_cache_bytes, idle.kv_reserved_bytes, idle.queued_sequences) == (0, 0, 0)
    assert idle.kv_budget_bytes == 64 * segment.kv_bytes_per_token

    segment.open(SequenceId("s"), max_tokens=16)
    segment.forward(end.embed([1, 2, 3]), SegmentBatch((SequenceId("s"),), (0,), (3,)))
    (busy,) = model_states([hosted])
    assert busy.kv_reserved_bytes == 16 * segment.kv_bytes_per_token
    assert busy.kv_cache_bytes == segment.cache_nbytes() > 0

    segment.release(SequenceId("s"))
    assert model_states([hosted])[0].kv_reserved_bytes == 0
    # A segment without a budget (an origin's own layers): no budget to report.
    unlimited = LayerSegment(end.source, 1, 2, torch.float32, torch.device("cpu"))
    assert model_states([Hosted("tiny", [unlimited])])[0].kv_budget_bytes is None


def test_a_model_with_no_segments_reports_no_budget() -> None:
    (state,) = model_states([Hosted("end-only")])
    assert state.kv_budget_bytes is None and state.active_sequences == 0
