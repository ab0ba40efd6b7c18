"""The mutual handshake as pure functions: both sides derive the same keys; forgeries fail."""

from __future__ import annotations

import os

import pytest

from language_pipes.network.handshake import (
    HandshakeFailed,
    HandshakeSide,
    check_client_signature,
    check_server_signature,
    sign_as_client,
    sign_as_server,
    transcript,
)
from language_pipes.network.identity import NodeIdentity


def test_both_sides_agree_on_directional_keys() -> None:
    client = HandshakeSide(NodeIdentity.generate("client"))
    server = HandshakeSide(NodeIdentity.generate("server"))
    network_key = os.urandom(16)
    shared_transcript = transcript(client.greeting, server.greeting, has_network_key=True)
    check_server_signature(server.greeting, shared_transcript, sign_as_server(server, shared_transcript))
    check_client_signature(client.greeting, shared_transcript, sign_as_client(client, shared_transcript))
    client_keys = client.session_keys(shared_transcript, server.greeting, network_key)
    server_keys = server.session_keys(shared_transcript, client.greeting, network_key)
    assert client_keys == server_keys
    assert client_keys.client_to_server != client_keys.server_to_client


def test_a_signature_from_an_old_handshake_does_not_pass() -> None:
    client = HandshakeSide(NodeIdentity.generate("client"))
    server_identity = NodeIdentity.generate("server")
    old, new = HandshakeSide(server_identity), HandshakeSide(server_identity)
    old_signature = sign_as_server(old, transcript(client.greeting, old.greeting, False))
    with pytest.raises(HandshakeFailed):
        check_server_signature(new.greeting, transcript(client.greeting, new.greeting, False), old_signature)


def test_the_client_signature_cannot_stand_in_for_the_server_one() -> None:
    client = HandshakeSide(NodeIdentity.generate("client"))
    server = HandshakeSide(NodeIdentity.generate("server"))
    shared_transcript = transcript(client.greeting, server.greeting, False)
    with pytest.raises(HandshakeFailed):
        check_client_signature(client.greeting, shared_transcript, sign_as_server(server, shared_transcript))
