"""What the dashboard computes: readiness hints, pipes with their gaps, job rates."""

from __future__ import annotations

from types import SimpleNamespace

from language_pipes.engine.detokenize import IncrementalDetokenizer
from language_pipes.engine.sequence import Sequence
from language_pipes.engine.speculation import DraftControl
from language_pipes.engine.types import GenerationRequest
from language_pipes.metrics import HopLatency
from language_pipes.network.types import HostedSegment, NodeId, NodeRecord
from language_pipes.node_status import active_jobs
from language_pipes.tui.status import (
    HOP_IDLE_AFTER_S,
    JobRates,
    acceptance_label,
    describe_segment,
    draw_pipe,
    hop_latency_text,
    missing_before_serving,
    pipe_views,
)
from language_pipes.vocabulary import SequenceId

MODEL = "org/model"


Spans = list[tuple[int, int, bool]]


def record(node_id: str, segments: Spans, end_models: tuple[str, ...] = ()) -> NodeRecord:
    return NodeRecord(
        node_id=NodeId(node_id),
        public_key=bytes(32),
        address="127.0.0.1",
        port=5000,
        segments=tuple(HostedSegment(MODEL, start, end, loaded) for start, end, loaded in segments),
        end_models=end_models,
        load=0,
        version=1,
    )


def test_a_new_configuration_lists_everything_it_lacks() -> None:
    missing = missing_before_serving(["node_id: required key is missing"], {}, False, False)
    assert missing[0].startswith("set a node id")
    assert any("add an end model" in line for line in missing)
    assert any("set a job port" in line for line in missing)
    assert any("start the network server" in line for line in missing)


def test_a_serving_node_lacks_nothing_and_an_incomplete_pipe_is_named() -> None:
    values = {"node_id": "a", "end_models": [MODEL], "job_port": 8000}
    assert missing_before_serving([], values, True, True) == []
    assert missing_before_serving([], values, True, True, [MODEL]) == [f"no complete pipe for model {MODEL}"]
    assert missing_before_serving([], values, True, False) == ["start the job server (Home or Jobs > Server)"]


def test_pipes_show_segments_in_layer_order_with_their_gaps() -> None:
    records = {
        "b": record("b", [(20, 30, False)]),
        "a": record("a", [(1, 10, True)], end_models=(MODEL,)),
    }
    (view,) = pipe_views(records, {MODEL: 30}, {MODEL: 1}, {MODEL: False})
    assert [(s.node_id, s.start_layer) for s in view.segments] == [("a", 1), ("b", 20)]
    assert view.end_model_nodes == ("a",)
    assert view.gaps() == [(10, 20)]
    assert view.loading and view.complete is False
    assert draw_pipe(view) == "E" + "A" * 9 + "·" * 10 + "~" * 10


def test_a_model_known_only_from_peers_has_unknown_completeness() -> None:
    (view,) = pipe_views({"b": record("b", [(0, 5, True)])}, {}, {}, {})
    assert view.complete is None and view.total_layers is None and view.gaps() == []


def test_job_rates_count_tokens_since_first_seen() -> None:
    rates = JobRates()
    assert rates.rate("s", 0, now=0.0) is None
    assert rates.rate("s", 4, now=1.0) is None  # first sight: no interval yet
    assert rates.rate("s", 14, now=3.0) == 5.0
    rates.forget_except([])
    assert rates.first_token_at == {}


def test_hop_latency_text_shows_the_average_and_the_last_step_and_marks_idle_hops() -> None:
    latency = HopLatency(last_s=0.0201, average_s=0.0214, steps=12, updated_at=100.0)
    assert hop_latency_text(latency, now=101.0) == "step 21.4 ms (last 20.1 ms)"
    assert hop_latency_text(latency, now=100.0 + HOP_IDLE_AFTER_S + 1) == "step 21.4 ms (last 20.1 ms), idle"
    assert hop_latency_text(None) == ""


def test_a_segment_is_described_with_its_data_type_and_state() -> None:
    assert describe_segment(HostedSegment(MODEL, 1, 16, True, "int8")) == f"{MODEL} 1-15 int8"
    assert describe_segment(HostedSegment(MODEL, 1, 16, False, "int4")) == f"{MODEL} 1-15 int4 (loading)"
    assert describe_segment(HostedSegment(MODEL, 28, 30, True, "bfloat16", private=True)) == (
        f"{MODEL} 28-29 bfloat16 (end model's own)"
    )
    assert describe_segment(HostedSegment(MODEL, 1, 4, True)) == f"{MODEL} 1-3"  # an older node: no type


def test_a_live_job_shows_its_speculative_drafts_accepted() -> None:
    """The Jobs page's snapshot of a live request carries its drafted and accepted token counts."""
    speculating = Sequence(
        SequenceId("a" * 32), GenerationRequest([1, 2, 3]), print, IncrementalDetokenizer(None)
    )
    speculating.speculation = DraftControl(limit=6, drafted=15, accepted=12)
    plain = Sequence(SequenceId("b" * 32), GenerationRequest([1, 2]), print, IncrementalDetokenizer(None))
    scheduler = SimpleNamespace(active_sequences=lambda: (speculating, plain))
    node = SimpleNamespace(models={MODEL: SimpleNamespace(model_id=MODEL, scheduler=scheduler)})
    first, second = active_jobs(node)  # type: ignore[arg-type]
    assert (first.drafted_tokens, first.accepted_tokens) == (15, 12)
    assert (second.drafted_tokens, second.accepted_tokens) == (0, 0)
    assert acceptance_label(first.drafted_tokens, first.accepted_tokens) == "12/15 (80%)"
    assert acceptance_label(0, 0) == "-"
