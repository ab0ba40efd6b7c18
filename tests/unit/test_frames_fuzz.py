"""Fuzzing the pipe frame decoders: random and mutated bytes decode within bounds or are MalformedPipeFrame.

Bounded for CI: 200 inputs per property (about 1,000 in all), no deadline.
"""

from __future__ import annotations

import uuid

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from language_pipes.models.segment import SegmentBatch
from language_pipes.pipes.frames import (
    MAX_HIDDEN_SIZE,
    MAX_STEP_SEQUENCES,
    MAX_STEP_TOKENS,
    MalformedPipeFrame,
    StepHeader,
    decode_sequence_ids,
    decode_step,
    encode_step,
    tensor_from_bytes,
)
from language_pipes.vocabulary import SequenceId

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _valid_header(count: int) -> bytes:
    batch = SegmentBatch(
        tuple(SequenceId(uuid.UUID(int=i + 1).hex) for i in range(count)),
        tuple(range(count)),
        (1,) * count,
    )
    return encode_step(StepHeader("model/x", 2, 9, torch.bfloat16, 576, batch))


def _decodes_within_bounds(raw: bytes) -> None:
    try:
        step = decode_step(raw)
    except MalformedPipeFrame:
        return
    assert 0 < step.hidden_size <= MAX_HIDDEN_SIZE
    assert step.start_layer <= step.end_layer
    assert len(step.batch.sequence_ids) <= MAX_STEP_SEQUENCES
    assert step.batch.total_tokens <= MAX_STEP_TOKENS


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_never_crash_the_step_decoder(raw: bytes) -> None:
    _decodes_within_bounds(raw)


@FUZZ
@given(
    st.integers(min_value=0, max_value=4),
    st.lists(st.tuples(st.integers(min_value=0, max_value=200), st.integers(0, 255)), max_size=8),
    st.integers(min_value=-3, max_value=3),
)
def test_mutated_step_headers_decode_within_bounds_or_are_refused(
    count: int, flips: list[tuple[int, int]], cut: int
) -> None:
    raw = bytearray(_valid_header(count))
    for position, value in flips:
        raw[position % len(raw)] = value
    if cut < 0:
        raw = raw[:cut]
    else:
        raw += b"\x00" * cut
    _decodes_within_bounds(bytes(raw))


@FUZZ
@given(st.binary(max_size=100))
def test_sequence_id_lists_decode_or_are_refused(raw: bytes) -> None:
    try:
        ids = decode_sequence_ids(raw)
    except MalformedPipeFrame:
        return
    assert all(len(sid) == 32 for sid in ids)


@FUZZ
@given(st.binary(max_size=200), st.sampled_from([torch.bfloat16, torch.float32]), st.integers(-2, 70))
def test_hidden_state_payloads_decode_or_are_refused(raw: bytes, dtype: torch.dtype, hidden: int) -> None:
    try:
        tensor = tensor_from_bytes(raw, dtype, hidden)
    except MalformedPipeFrame:
        return
    assert tensor.shape[-1] == hidden and tensor.dtype == dtype
