"""Pipe frames: step headers and hidden-state bytes round-trip exactly; malformed bytes are refused."""

from __future__ import annotations

import struct
import time
import uuid

import pytest
import torch

from language_pipes.models.segment import SegmentBatch
from language_pipes.pipes.frames import (
    MAX_STEP_SEQUENCES,
    MAX_STEP_TOKENS,
    MalformedPipeFrame,
    StepHeader,
    decode_sequence_ids,
    decode_step,
    encode_sequence_id,
    encode_sequence_ids,
    encode_step,
    tensor_bytes,
    tensor_from_bytes,
)
from language_pipes.vocabulary import SequenceId

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def new_id() -> SequenceId:
    return SequenceId(uuid.uuid4().hex)


def make_header(count: int = 3, dtype: torch.dtype = torch.bfloat16, model_id: str = MODEL) -> StepHeader:
    batch = SegmentBatch(
        sequence_ids=tuple(new_id() for _ in range(count)),
        start_positions=tuple(range(0, 7 * count, 7)),
        lengths=tuple(range(1, count + 1)),
    )
    return StepHeader(model_id, 4, 17, dtype, 576, batch)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_step_header_round_trip(dtype: torch.dtype) -> None:
    header = make_header(dtype=dtype)
    assert decode_step(encode_step(header)) == header


def test_step_header_with_no_sequences_and_a_unicode_model_id_round_trips() -> None:
    header = make_header(count=0, model_id="org/modèle-ü")
    assert decode_step(encode_step(header)) == header


def test_step_header_is_small_and_fixed_per_sequence() -> None:
    one, four = len(encode_step(make_header(1))), len(encode_step(make_header(4)))
    assert four - one == 3 * (16 + 4 + 4)  # sequence id, start position, new tokens
    assert one < 100


def test_large_positions_survive() -> None:
    """Positions are the segment's business (it knows the context); the frame carries any."""
    batch = SegmentBatch((new_id(),), (2**31 + 5,), (MAX_STEP_TOKENS,))
    header = StepHeader(MODEL, 0, 30, torch.bfloat16, 576, batch)
    assert decode_step(encode_step(header)).batch == batch


@pytest.mark.parametrize("cut", [0, 1, 10, 14])
def test_truncated_fixed_part_is_malformed(cut: int) -> None:
    with pytest.raises(MalformedPipeFrame):
        decode_step(encode_step(make_header())[:cut])


def test_truncated_sequence_rows_are_malformed() -> None:
    raw = encode_step(make_header(3))
    with pytest.raises(MalformedPipeFrame):
        decode_step(raw[:-5])


def test_trailing_bytes_are_malformed() -> None:
    with pytest.raises(MalformedPipeFrame, match="trailing"):
        decode_step(encode_step(make_header()) + b"\x00")


def test_unknown_dtype_code_is_malformed() -> None:
    raw = bytearray(encode_step(make_header()))
    raw[6] = 99  # the dtype byte follows model id length, start and end (three u16)
    with pytest.raises(MalformedPipeFrame):
        decode_step(bytes(raw))


def test_model_id_that_is_not_utf8_is_malformed() -> None:
    fixed = struct.pack("!HHHBII", 2, 0, 1, 1, 576, 0)
    with pytest.raises(MalformedPipeFrame):
        decode_step(fixed + b"\xff\xfe")


def test_model_id_length_beyond_the_frame_is_malformed() -> None:
    fixed = struct.pack("!HHHBII", 500, 0, 1, 1, 576, 0)
    with pytest.raises(MalformedPipeFrame):
        decode_step(fixed + b"abc")


def test_sequence_count_beyond_the_frame_is_malformed() -> None:
    fixed = struct.pack("!HHHBII", 0, 0, 1, 1, 576, 1000)
    with pytest.raises(MalformedPipeFrame):
        decode_step(fixed + encode_sequence_id(new_id()) + b"\x00" * 8)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_hidden_states_round_trip_bit_exactly(dtype: torch.dtype) -> None:
    hidden = torch.randn(1, 5, 576).to(dtype)
    raw = tensor_bytes(hidden)
    assert len(raw) == hidden.numel() * hidden.element_size()
    restored = tensor_from_bytes(bytes(raw), dtype, 576)
    assert restored.shape == (1, 5, 576) and restored.dtype == dtype
    assert torch.equal(restored, hidden)


def test_hidden_states_of_a_non_contiguous_tensor_round_trip() -> None:
    hidden = torch.randn(1, 576, 6).to(torch.bfloat16).transpose(1, 2)
    assert not hidden.is_contiguous()
    assert torch.equal(tensor_from_bytes(tensor_bytes(hidden), torch.bfloat16, 576), hidden)


def test_received_hidden_states_do_not_alias_the_receive_buffer() -> None:
    raw = bytearray(tensor_bytes(torch.ones(1, 2, 4, dtype=torch.float32)))
    restored = tensor_from_bytes(raw, torch.float32, 4)
    raw[:] = b"\x00" * len(raw)
    assert torch.equal(restored, torch.ones(1, 2, 4))


def test_payload_that_is_not_whole_rows_is_malformed() -> None:
    raw = tensor_bytes(torch.zeros(1, 3, 576, dtype=torch.bfloat16))
    with pytest.raises(MalformedPipeFrame):
        tensor_from_bytes(bytes(raw)[:-2], torch.bfloat16, 576)


def test_sequence_id_lists_round_trip() -> None:
    ids = [new_id() for _ in range(5)]
    assert decode_sequence_ids(encode_sequence_ids(ids)) == ids
    assert decode_sequence_ids(b"") == []


def test_sequence_id_list_of_partial_ids_is_malformed() -> None:
    with pytest.raises(MalformedPipeFrame):
        decode_sequence_ids(encode_sequence_ids([new_id()]) + b"\x01")


@pytest.mark.parametrize("bad_id", ["ab", "00" * 17, "not hex at all"])
def test_sequence_ids_that_are_not_16_bytes_are_refused_not_padded(bad_id: str) -> None:
    with pytest.raises(ValueError):
        encode_sequence_id(SequenceId(bad_id))


def test_a_sequence_count_of_2_to_the_32_is_refused_before_reading_rows() -> None:
    fixed = struct.pack("!HHHBII", 0, 0, 1, 1, 576, 2**32 - 1)
    started = time.perf_counter()
    with pytest.raises(MalformedPipeFrame, match="at most"):
        decode_step(fixed + encode_sequence_id(new_id()) + b"\x00" * 8)
    assert time.perf_counter() - started < 0.1


def test_more_sequences_than_a_step_may_carry_are_refused_even_when_every_row_is_there() -> None:
    count = MAX_STEP_SEQUENCES + 1
    batch = SegmentBatch(tuple(new_id() for _ in range(count)), (0,) * count, (1,) * count)
    with pytest.raises(MalformedPipeFrame, match="sequences"):
        decode_step(encode_step(StepHeader(MODEL, 0, 30, torch.bfloat16, 576, batch)))


def test_more_tokens_than_a_step_may_carry_are_refused() -> None:
    batch = SegmentBatch((new_id(), new_id()), (0, 0), (MAX_STEP_TOKENS, 1))
    with pytest.raises(MalformedPipeFrame, match="tokens"):
        decode_step(encode_step(StepHeader(MODEL, 0, 30, torch.bfloat16, 576, batch)))


@pytest.mark.parametrize("hidden_size", [0, 2**31])
def test_hidden_size_outside_the_bounds_is_malformed(hidden_size: int) -> None:
    fixed = struct.pack("!HHHBII", 0, 0, 1, 1, hidden_size, 0)
    with pytest.raises(MalformedPipeFrame, match="hidden size"):
        decode_step(fixed)


def test_reversed_layer_range_is_malformed() -> None:
    fixed = struct.pack("!HHHBII", 0, 9, 3, 1, 576, 0)
    with pytest.raises(MalformedPipeFrame, match="reversed"):
        decode_step(fixed)


def test_zero_hidden_size_payload_is_malformed_not_a_crash() -> None:
    with pytest.raises(MalformedPipeFrame):
        tensor_from_bytes(b"\x00" * 8, torch.bfloat16, 0)
