"""Frame layout: envelopes and inner headers round-trip; garbage is refused."""

from __future__ import annotations

import pytest

from language_pipes.network.wire import (
    MalformedFrame,
    decode_envelope,
    decode_inner_header,
    encode_data_envelope,
    encode_handshake_envelope,
    encode_inner_header,
)


def test_data_envelope_round_trip() -> None:
    envelope = decode_envelope(encode_data_envelope(2**40 + 6, "hidden_states"))
    assert (envelope.frame_type, envelope.counter, envelope.kind) == ("data", 2**40 + 6, "hidden_states")


def test_handshake_envelope_round_trip() -> None:
    envelope = decode_envelope(encode_handshake_envelope("welcome", sealed=True))
    assert (envelope.frame_type, envelope.sealed) == ("welcome", True)
    assert not decode_envelope(encode_handshake_envelope("hello", sealed=False)).sealed


def test_inner_header_keeps_dict_or_raw_bytes() -> None:
    as_dict = decode_inner_header(encode_inner_header("request", 42, {"shape": [1, 576], "dtype": "bf16"}))
    assert (as_dict.role, as_dict.correlation_id, as_dict.header) == (
        "request",
        42,
        {"shape": [1, 576], "dtype": "bf16"},
    )
    raw = decode_inner_header(encode_inner_header("oneway", 0, b"\x00\x01binary"))
    assert raw.header == b"\x00\x01binary"


@pytest.mark.parametrize("garbage", [b"", b"\x09\x01\x00", b"\x01\x77\x00", b"\x01\x06\x00"])
def test_garbage_envelopes_are_refused(garbage: bytes) -> None:
    with pytest.raises(MalformedFrame):
        decode_envelope(garbage)
