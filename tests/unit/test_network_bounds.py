"""Bounds on what peers send: JSON size and depth, record fields, rate-limited logs, supervisors."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest

from language_pipes.network.guard import FrameGuard, RateLimitedLog, TokenBucket, supervise
from language_pipes.network.identity import NodeIdentity
from language_pipes.network.types import HostedSegment, NodeRecord, is_host
from language_pipes.network.wire import MalformedFrame, decode_json_body, loads_bounded


def test_deep_nesting_is_refused_before_the_parser_recurses() -> None:
    with pytest.raises(MalformedFrame, match="nested deeper"):
        loads_bounded(b"[" * 10_000, max_bytes=1 << 20)
    with pytest.raises(MalformedFrame, match="nested deeper"):
        loads_bounded(b'{"a":' * 40 + b"1" + b"}" * 40, max_bytes=1 << 20)


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = json.dumps({"note": "[[[[{{{{" * 100, "escaped": '\\"[[['}).encode()
    assert loads_bounded(text, max_bytes=1 << 20)["note"].startswith("[[[[")


def test_oversized_and_invalid_json_are_malformed_frames() -> None:
    with pytest.raises(MalformedFrame, match="at most"):
        loads_bounded(b"1" * 101, max_bytes=100)
    with pytest.raises(MalformedFrame):
        decode_json_body(b"\xff\xfe not json")
    with pytest.raises(MalformedFrame):
        decode_json_body(b"[" * 100_000)  # the hello that used to raise RecursionError


@pytest.mark.parametrize("address", ["10.0.0.7", "::1", "node-7.example.org", "localhost"])
def test_hosts_that_may_be_advertised(address: str) -> None:
    assert is_host(address)


@pytest.mark.parametrize("address", ["x y", "", "999.1.1.1", "a" * 300, "-bad-.example", "tcp://x", "a:1"])
def test_addresses_that_may_not(address: str) -> None:
    assert not is_host(address)


def _wire(**changes: object) -> dict[str, object]:
    identity = NodeIdentity.generate("n")
    record = NodeRecord(identity.node_id, identity.public_key, "127.0.0.1", 5000, (), (), 0, 1)
    return {**record.to_wire(), **changes}


@pytest.mark.parametrize(
    "changes",
    [
        {"address": "x y"},
        {"port": 0},
        {"port": 70000},
        {"node_id": "n" * 500},
        {"load": -1},
        {"load": 10**30},
        {"version": 2**80},
        {"end_models": ["m"] * 1000},
        {"segments": [HostedSegment("m", 0, 10**9, True).to_wire()]},
        {"segments": [HostedSegment("m", 5, 5, True).to_wire()]},
        {"segments": [HostedSegment("m" * 1000, 0, 4, True).to_wire()]},
    ],
)
def test_records_with_insane_fields_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        NodeRecord.from_wire(_wire(**changes))


def test_a_sane_record_still_parses() -> None:
    segment = HostedSegment("org/model", 1, 31, True).to_wire()
    record = NodeRecord.from_wire(_wire(segments=[segment], end_models=["org/model"], load=3))
    assert record.segments[0].end_layer == 31


def test_rate_limited_log_keeps_a_burst_then_counts_what_it_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="test.bounds")
    log = RateLimitedLog(logging.getLogger("test.bounds"), interval_s=0.2, burst=3)
    for index in range(50):
        log.warning("flood", "bad frame %d", index)
    assert [record.getMessage() for record in caplog.records] == ["bad frame 0", "bad frame 1", "bad frame 2"]
    time.sleep(0.25)
    log.warning("flood", "bad frame %d", 99)
    assert caplog.records[-1].getMessage() == "bad frame 99 (47 similar lines suppressed)"


def test_frame_guard_counts_per_loop() -> None:
    guard = FrameGuard(logging.getLogger("test.bounds"))
    guard.dropped("peer port", "127.0.0.1", ValueError("x"))
    guard.dropped("peer port", "127.0.0.1", RecursionError())
    guard.dropped("step lanes", "a lane peer", KeyError("k"))
    assert guard.dropped_frames == 3
    assert guard.dropped_by_loop() == {"peer port": 2, "step lanes": 1}


@pytest.mark.asyncio
async def test_a_supervisor_restarts_a_loop_that_dies() -> None:
    guard = FrameGuard(logging.getLogger("test.bounds"))
    runs: list[int] = []

    async def loop() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise RuntimeError("died")

    await asyncio.wait_for(supervise("test loop", loop, guard, lambda: True), 5.0)
    assert runs == [0, 1, 2]
    assert guard.restarts == 2


def test_token_bucket_limits_the_rate() -> None:
    bucket = TokenBucket(rate=10.0, burst=5)
    assert [bucket.take(now=100.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert bucket.take(now=100.15)
    assert not bucket.take(now=100.15)
