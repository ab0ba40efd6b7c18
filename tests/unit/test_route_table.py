"""The origin's route table: planning is a question without side effects, building is explicit.

:func:`plan_hops` and :class:`RouteTable` run over plain records, without a
network. The last tests ask a real (unstarted) :class:`Node` whether a model is
servable, as ``/v1/models`` and the TUI's status snapshot do, and check that no
route was built.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from language_pipes.config import NodeConfig
from language_pipes.network.types import HostedSegment, NodeId, NodeRecord
from language_pipes.node import HostedModel, Node
from language_pipes.node_status import HostedModelStatus, node_status
from language_pipes.pipes.route import SegmentRunner
from language_pipes.pipes.route_table import RouteTable, plan_hops
from language_pipes.pipes.routing import Hop
from language_pipes.vocabulary import ModelId

MODEL = ModelId("tiny/model")
ORIGIN = NodeId("origin")


def record(node_id: str, start: int, end: int, load: int = 0, loaded: bool = True) -> NodeRecord:
    return NodeRecord(
        node_id=NodeId(node_id),
        public_key=b"k" * 32,
        address="127.0.0.1",
        port=1,
        segments=(HostedSegment(MODEL, start, end, loaded),),
        end_models=(),
        load=load,
        version=1,
    )


def records(*items: NodeRecord) -> dict[NodeId, NodeRecord]:
    return {item.node_id: item for item in items}


class CountingRunner:
    """A stand-in hop: the table only builds and keeps runners."""

    built: list[Hop] = []

    def __init__(self, hop: Hop) -> None:
        CountingRunner.built.append(hop)


def runner(hop: Hop) -> SegmentRunner:
    return CountingRunner(hop)  # type: ignore[return-value]


def test_planning_chains_loaded_segments_and_adds_this_origins_open_sequences() -> None:
    known = records(record("a", 1, 4), record("b", 1, 4, load=1), record("c", 4, 8, loaded=False))
    assert plan_hops(MODEL, known, ORIGIN, 1, 4, [], {}) == (Hop("a", 1, 4),)
    # Two sequences this origin has open on "a" count before gossip reports them.
    assert plan_hops(MODEL, known, ORIGIN, 1, 4, [], {"a": 2}) == (Hop("b", 1, 4),)
    assert plan_hops(MODEL, known, ORIGIN, 1, 8, [], {}) is None  # "c" has not loaded its layers
    assert plan_hops(MODEL, known, ORIGIN, 1, 8, [(4, 8)], {}) == (Hop("a", 1, 4), Hop(ORIGIN, 4, 8))


def test_the_table_builds_a_route_once_and_retires_it_when_its_node_leaves() -> None:
    CountingRunner.built = []
    table = RouteTable(ORIGIN)
    hops = (Hop("a", 1, 4),)
    first = table.route(MODEL, hops, runner)
    assert table.route(MODEL, hops, runner) is first and CountingRunner.built == [Hop("a", 1, 4)]
    first.open_sequences = 3
    assert table.open_by_node() == {"a": 3}
    table.retire_stale(records(record("a", 1, 4)))
    assert len(table) == 1 and not first.retired
    table.retire_stale(records(record("b", 1, 4)))
    assert len(table) == 0 and first.retired


def test_unloading_retires_only_the_routes_through_this_node() -> None:
    table = RouteTable(ORIGIN)
    remote = table.route(MODEL, (Hop("a", 1, 4),), runner)
    own = table.route(MODEL, (Hop("a", 1, 2), Hop(ORIGIN, 2, 4)), runner)
    table.retire_own_hops(MODEL)
    assert own.retired and not remote.retired and len(table) == 1


@pytest.fixture
def origin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Node:
    """An unstarted node holding an end model and layers 1-3 of a four-layer model: a local pipe."""
    monkeypatch.setenv("LP_APP_DIR", str(tmp_path))
    node = Node(NodeConfig(node_id="origin", job_port=None))
    segment: Any = SimpleNamespace(start=1, end=4)
    node.models[MODEL] = HostedModel(
        MODEL,
        source=SimpleNamespace(num_layers=4),  # type: ignore[arg-type]
        end_model=SimpleNamespace(shared_layers=range(1, 4)),  # type: ignore[arg-type]
        segments=[segment],
        generator=object(),  # type: ignore[arg-type]
    )
    return node


def test_asking_whether_a_model_is_servable_builds_no_route(origin: Node) -> None:
    assert origin.servable_models() == [MODEL]
    assert origin.has_route(MODEL) and origin.generator(MODEL) is not None
    assert len(origin.routes) == 0  # /v1/models and the TUI only asked
    route = origin.route_for(MODEL)
    assert route is not None and len(origin.routes) == 1
    assert origin.route_for(MODEL) is route


def test_the_status_snapshot_says_what_is_hosted_and_served_without_building_routes(origin: Node) -> None:
    status = node_status(origin)
    assert status.node_id == "origin" and status.records == {}  # not started: no record published yet
    assert status.models == (
        HostedModelStatus(MODEL, total_layers=4, segments=((1, 4),), first_shared_layer=1, servable=True),
    )
    assert status.model(MODEL) is status.models[0] and status.model("other") is None
    assert len(origin.routes) == 0
