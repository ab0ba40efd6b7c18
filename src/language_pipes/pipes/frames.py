"""The binary layout of pipe messages: a small struct header plus raw hidden-state bytes.

A step header names the model, the layers to run and, for each sequence in
the packed batch, its opaque id, first position and number of new tokens.
No token ids or text ever appear here: layer nodes only see hidden states.

Every count and size in a header is bounded (``MAX_*`` below) and checked
against the frame's length before anything is allocated; the payload of the
largest legal step is :func:`max_step_payload_bytes`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import torch

from language_pipes.models.segment import SegmentBatch
from language_pipes.network.limits import MAX_HIDDEN_SIZE, MAX_STEP_TOKENS
from language_pipes.vocabulary import SequenceId

KIND_OPEN = "pipe.open"
KIND_STEP = "pipe.step"
KIND_RELEASE = "pipe.release"

_DTYPE_CODES: dict[torch.dtype, int] = {torch.bfloat16: 1, torch.float16: 2, torch.float32: 3}
_DTYPES_BY_CODE = {code: dtype for dtype, code in _DTYPE_CODES.items()}

_STEP_FIXED = struct.Struct("!HHHBII")  # model id length, start, end, dtype, hidden size, sequence count
SEQUENCE_ID_BYTES = 16
_SEQUENCE = struct.Struct("!16sII")  # sequence id, start position, new tokens (top bit: decode run)
# Set in a sequence's token count when its rows are a decode run (SegmentBatch.decode_runs).
DECODE_RUN_BIT = 1 << 31

# Bounds of one step (the origin's scheduler packs at most step_token_budget = 512 tokens by default);
# tokens and hidden size are the network's, which sizes every socket's message cap from them.
MAX_STEP_SEQUENCES = 1024
MAX_MODEL_ID_BYTES = 512
# The largest step header: fixed part, the longest model id, a row per sequence.
MAX_STEP_HEADER_BYTES = _STEP_FIXED.size + MAX_MODEL_ID_BYTES + MAX_STEP_SEQUENCES * _SEQUENCE.size


def max_step_payload_bytes(hidden_size: int = MAX_HIDDEN_SIZE, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of the hidden states of the largest legal step."""
    return MAX_STEP_TOKENS * hidden_size * torch.empty((), dtype=dtype).element_size()


class MalformedPipeFrame(ValueError):
    """Bytes that do not follow the pipe frame layout."""


@dataclass(frozen=True)
class StepHeader:
    model_id: str
    start_layer: int
    end_layer: int
    dtype: torch.dtype
    hidden_size: int
    batch: SegmentBatch


def encode_sequence_id(sequence_id: SequenceId) -> bytes:
    """The 16 raw bytes of a 32-hex-digit id; anything else is refused rather than padded or cut."""
    raw = bytes.fromhex(sequence_id)
    if len(raw) != SEQUENCE_ID_BYTES:
        raise ValueError(f"sequence id must be {SEQUENCE_ID_BYTES} bytes (32 hex digits), got {len(raw)}")
    return raw


def decode_sequence_id(raw: bytes) -> SequenceId:
    return SequenceId(raw.hex())


def encode_step(header: StepHeader) -> bytes:
    model = header.model_id.encode()
    batch = header.batch
    fixed = _STEP_FIXED.pack(
        len(model),
        header.start_layer,
        header.end_layer,
        _DTYPE_CODES[header.dtype],
        header.hidden_size,
        len(batch.sequence_ids),
    )
    rows = b"".join(
        _SEQUENCE.pack(
            encode_sequence_id(sid), start, length | (DECODE_RUN_BIT if batch.decode_run(i) else 0)
        )
        for i, (sid, start, length) in enumerate(
            zip(batch.sequence_ids, batch.start_positions, batch.lengths, strict=True)
        )
    )
    return fixed + model + rows


def decode_step(raw: bytes) -> StepHeader:
    try:
        model_length, start, end, dtype_code, hidden_size, count = _STEP_FIXED.unpack_from(raw)
        offset = _STEP_FIXED.size
        _check_bounds(model_length, start, end, hidden_size, count)
        if offset + model_length + count * _SEQUENCE.size != len(raw):
            raise MalformedPipeFrame("step header is truncated or has trailing bytes")
        model_id = raw[offset : offset + model_length].decode()
        offset += model_length
        rows = [_SEQUENCE.unpack_from(raw, offset + i * _SEQUENCE.size) for i in range(count)]
        runs = tuple(bool(r[2] & DECODE_RUN_BIT) for r in rows)
        rows = [(r[0], r[1], r[2] & ~DECODE_RUN_BIT) for r in rows]
        dtype = _DTYPES_BY_CODE[dtype_code]
    except (struct.error, KeyError, UnicodeDecodeError) as error:
        # Any layout violation is the sender's fault; the handler turns this into an error reply.
        raise MalformedPipeFrame(f"bad step header: {error}") from error
    if sum(r[2] for r in rows) > MAX_STEP_TOKENS:
        raise MalformedPipeFrame(f"a step carries at most {MAX_STEP_TOKENS} tokens")
    batch = SegmentBatch(
        sequence_ids=tuple(decode_sequence_id(r[0]) for r in rows),
        start_positions=tuple(r[1] for r in rows),
        lengths=tuple(r[2] for r in rows),
        decode_runs=runs if any(runs) else (),
    )
    return StepHeader(model_id, start, end, dtype, hidden_size, batch)


def _check_bounds(model_length: int, start: int, end: int, hidden_size: int, count: int) -> None:
    if model_length > MAX_MODEL_ID_BYTES:
        raise MalformedPipeFrame(f"model id longer than {MAX_MODEL_ID_BYTES} bytes")
    if start > end:
        raise MalformedPipeFrame(f"layer range {start}-{end} is reversed")
    if not 0 < hidden_size <= MAX_HIDDEN_SIZE:
        raise MalformedPipeFrame(f"hidden size {hidden_size} is outside 1-{MAX_HIDDEN_SIZE}")
    if count > MAX_STEP_SEQUENCES:
        raise MalformedPipeFrame(f"a step carries at most {MAX_STEP_SEQUENCES} sequences, not {count}")


def tensor_bytes(hidden: torch.Tensor) -> memoryview:
    """The raw bytes of a contiguous CPU tensor, without a copy."""
    flat = hidden.detach().to("cpu").contiguous().view(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def tensor_from_bytes(raw: bytes | memoryview, dtype: torch.dtype, hidden_size: int) -> torch.Tensor:
    """``[1, tokens, hidden_size]`` tensor over the received bytes."""
    if hidden_size <= 0:
        raise MalformedPipeFrame("hidden size must be positive")
    if len(raw) % torch.empty((), dtype=dtype).element_size():
        raise MalformedPipeFrame("payload size is not a whole number of values")
    if not len(raw):
        return torch.empty((1, 0, hidden_size), dtype=dtype)  # frombuffer refuses an empty buffer
    values = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype)
    if values.numel() % hidden_size:
        raise MalformedPipeFrame("payload size is not a multiple of the hidden size")
    return values.view(1, -1, hidden_size)


def encode_sequence_ids(sequence_ids: list[SequenceId]) -> bytes:
    return b"".join(encode_sequence_id(sid) for sid in sequence_ids)


def decode_sequence_ids(raw: bytes) -> list[SequenceId]:
    if len(raw) % 16:
        raise MalformedPipeFrame("sequence id list must be a multiple of 16 bytes")
    return [decode_sequence_id(raw[i : i + 16]) for i in range(0, len(raw), 16)]
