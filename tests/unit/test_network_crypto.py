"""Sealed frames: key derivation, counter nonces, replay protection, associated data."""

from __future__ import annotations

import os

import pytest

from language_pipes.network.crypto import (
    FrameRejected,
    ReceivingCipher,
    SendingCipher,
    derive_session_keys,
    handshake_cipher,
    open_handshake,
    parse_network_key,
    seal_handshake,
)
from language_pipes.network.session import data_associated_bytes


def test_parse_network_key_accepts_32_hex_characters_only() -> None:
    assert parse_network_key("00112233445566778899aabbccddeeff") == bytes.fromhex(
        "00112233445566778899aabbccddeeff"
    )
    with pytest.raises(ValueError):
        parse_network_key("0011")
    with pytest.raises(ValueError):
        parse_network_key("zz112233445566778899aabbccddeeff")


def test_handshake_sealed_with_one_network_key_does_not_open_with_another() -> None:
    sealer = handshake_cipher(os.urandom(16))
    other = handshake_cipher(os.urandom(16))
    assert sealer is not None and other is not None
    sealed = seal_handshake(sealer, b"hello", b"envelope")
    assert open_handshake(sealer, sealed, b"envelope") == b"hello"
    with pytest.raises(FrameRejected):
        open_handshake(other, sealed, b"envelope")
    with pytest.raises(FrameRejected):
        open_handshake(sealer, sealed, b"another envelope")


def test_no_network_key_means_no_handshake_cipher() -> None:
    assert handshake_cipher(None) is None


def test_session_keys_depend_on_network_key_and_transcript() -> None:
    secret = os.urandom(32)
    key = os.urandom(16)
    client_to_server, server_to_client = derive_session_keys(secret, key, b"transcript")
    assert client_to_server != server_to_client
    assert derive_session_keys(secret, key, b"transcript") == (client_to_server, server_to_client)
    assert derive_session_keys(secret, None, b"transcript")[0] != client_to_server
    assert derive_session_keys(secret, key, b"other transcript")[0] != client_to_server


def _pair() -> tuple[SendingCipher, ReceivingCipher]:
    key = os.urandom(32)
    return SendingCipher(key), ReceivingCipher(key)


def test_counters_never_repeat_and_identical_messages_encrypt_differently() -> None:
    sender, _ = _pair()
    counters = []
    ciphertexts = set()
    for _ in range(1000):
        counter, (header, payload) = sender.seal(b"ad", b"same header", b"same payload")
        counters.append(counter)
        ciphertexts.add(header)
    assert counters == sorted(set(counters))
    assert all(later - earlier == 2 for earlier, later in zip(counters, counters[1:], strict=False))
    assert len(ciphertexts) == 1000


def test_receiver_opens_in_order_and_rejects_replays() -> None:
    sender, receiver = _pair()
    first = sender.seal(b"ad", b"h1", b"p1")
    second = sender.seal(b"ad", b"h2", b"p2")
    assert receiver.open(first[0], b"ad", *first[1]) == [b"h1", b"p1"]
    assert receiver.open(second[0], b"ad", *second[1]) == [b"h2", b"p2"]
    with pytest.raises(FrameRejected, match="replayed"):
        receiver.open(second[0], b"ad", *second[1])
    with pytest.raises(FrameRejected, match="replayed"):
        receiver.open(first[0], b"ad", *first[1])


def test_receiver_rejects_reordered_frames() -> None:
    sender, receiver = _pair()
    first = sender.seal(b"ad", b"h1", b"p1")
    second = sender.seal(b"ad", b"h2", b"p2")
    assert receiver.open(second[0], b"ad", *second[1]) == [b"h2", b"p2"]
    with pytest.raises(FrameRejected):
        receiver.open(first[0], b"ad", *first[1])


def test_a_frame_is_bound_to_its_sender_and_kind() -> None:
    sender, receiver = _pair()
    counter, sealed = sender.seal(data_associated_bytes("node-a", "hidden"), b"h", b"p")
    with pytest.raises(FrameRejected, match="authentication failed"):
        receiver.open(counter, data_associated_bytes("node-b", "hidden"), *sealed)
    with pytest.raises(FrameRejected, match="authentication failed"):
        receiver.open(counter, data_associated_bytes("node-a", "other-kind"), *sealed)
    # A failed frame does not advance the counter: the genuine frame still opens.
    assert receiver.open(counter, data_associated_bytes("node-a", "hidden"), *sealed) == [b"h", b"p"]


def test_a_forged_counter_does_not_open() -> None:
    sender, receiver = _pair()
    counter, sealed = sender.seal(b"ad", b"h", b"p")
    with pytest.raises(FrameRejected):
        receiver.open(counter + 10, b"ad", *sealed)


def test_tampered_payload_is_rejected() -> None:
    sender, receiver = _pair()
    counter, (header, payload) = sender.seal(b"ad", b"h", b"payload bytes")
    tampered = bytes([payload[0] ^ 1]) + payload[1:]
    with pytest.raises(FrameRejected):
        receiver.open(counter, b"ad", header, tampered)
