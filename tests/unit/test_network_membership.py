"""Signed records, trust on first use, whitelist and liveness bookkeeping."""

from __future__ import annotations

import dataclasses

from language_pipes.network.identity import NodeIdentity
from language_pipes.network.limits import MAX_PENDING_PER_SENDER, RECORD_TTL_S
from language_pipes.network.membership import (
    Membership,
    PinnedKeys,
    SignedRecord,
    record_signature_is_valid,
    sign_record,
)
from language_pipes.network.types import HostedSegment, NodeId, NodeRecord


def _record(identity: NodeIdentity, version: int = 1, load: int = 0) -> NodeRecord:
    return NodeRecord(
        node_id=identity.node_id,
        public_key=identity.public_key,
        address="127.0.0.1",
        port=5000,
        segments=(HostedSegment("m", 0, 10, loaded=True),),
        end_models=("m",),
        load=load,
        version=version,
    )


def _membership(whitelist: tuple[str, ...] = ()) -> Membership:
    return Membership(NodeIdentity.generate("self"), whitelist, PinnedKeys(), departed_memory_s=10.0)


def test_record_survives_the_wire_and_its_signature_verifies() -> None:
    owner = NodeIdentity.generate("a")
    signed = sign_record(owner, _record(owner))
    copy = SignedRecord.from_wire(signed.to_wire())
    assert copy == signed
    assert record_signature_is_valid(copy)


def test_a_changed_record_fails_verification() -> None:
    owner = NodeIdentity.generate("a")
    signed = sign_record(owner, _record(owner))
    tampered = SignedRecord(dataclasses.replace(signed.record, port=6000), signed.signature)
    assert not record_signature_is_valid(tampered)
    assert _membership().consider(tampered, now=0.0) == "bad_signature"


def test_newest_version_wins_and_only_connected_peers_are_live() -> None:
    membership = _membership()
    owner = NodeIdentity.generate("a")
    assert membership.consider(sign_record(owner, _record(owner, version=2)), now=0.0) == "accepted"
    assert membership.consider(sign_record(owner, _record(owner, version=1)), now=0.0) == "unchanged"
    assert membership.live_records() == {}
    membership.mark_connected(NodeId("a"), now=0.0)
    assert list(membership.live_records()) == ["a"]
    assert membership.consider(sign_record(owner, _record(owner, version=3, load=4)), now=0.0) == "accepted"
    assert membership.live_records()[NodeId("a")].record.load == 4


def test_second_key_for_a_known_id_is_rejected() -> None:
    membership = _membership()
    genuine, impostor = (
        NodeIdentity.generate("a"),
        NodeIdentity(NodeId("a"), NodeIdentity.generate("x").private_key),
    )
    assert membership.consider(sign_record(genuine, _record(genuine)), now=0.0) == "accepted"
    assert membership.consider(sign_record(impostor, _record(impostor, version=9)), now=0.0) == "key_conflict"
    assert membership.record_of(NodeId("a")).record.public_key == genuine.public_key  # type: ignore[union-attr]


def test_whitelist_filters_records() -> None:
    membership = _membership(whitelist=("a",))
    a, b = NodeIdentity.generate("a"), NodeIdentity.generate("b")
    assert membership.consider(sign_record(b, _record(b)), now=0.0) == "not_whitelisted"
    assert membership.consider(sign_record(a, _record(a)), now=0.0) == "accepted"
    assert membership.allows(NodeId("self"))


def test_silent_peers_are_found_and_dropped_records_stay_out_for_a_while() -> None:
    membership = _membership()
    owner = NodeIdentity.generate("a")
    signed = sign_record(owner, _record(owner, version=5))
    membership.consider(signed, now=0.0)
    membership.mark_connected(NodeId("a"), now=0.0)
    membership.mark_heard(NodeId("a"), now=1.0)
    assert membership.silent_peers(now=3.0, timeout_s=5.0) == []
    assert membership.silent_peers(now=7.0, timeout_s=5.0) == ["a"]
    assert membership.drop(NodeId("a"), now=7.0)
    assert membership.live_records() == {}
    # Gossip from a peer that has not noticed yet must not bring the dead node back...
    assert membership.consider(signed, now=8.0) == "departed"
    # ...but a restarted node (newer version) is welcome at once, and old news after a while.
    assert membership.consider(sign_record(owner, _record(owner, version=6)), now=8.0) == "accepted"
    membership.drop(NodeId("a"), now=9.0)
    assert membership.consider(sign_record(owner, _record(owner, version=6)), now=30.0) == "accepted"


def test_a_gossiped_record_pins_no_key() -> None:
    membership = _membership()
    squatter = NodeIdentity(NodeId("a"), NodeIdentity.generate("x").private_key)
    assert membership.consider(sign_record(squatter, _record(squatter)), now=0.0) == "accepted"
    assert membership.pinned_keys.pinned(NodeId("a")) is None
    # The real node proves its key in a handshake: the squatter's record goes.
    genuine = NodeIdentity.generate("a")
    assert membership.pinned_keys.pin(NodeId("a"), genuine.public_key)
    membership.key_pinned(NodeId("a"), genuine.public_key)
    assert membership.record_of(NodeId("a")) is None
    assert membership.consider(sign_record(squatter, _record(squatter, version=5)), now=0.0) == "key_conflict"
    assert membership.consider(sign_record(genuine, _record(genuine)), now=0.0) == "accepted"


def test_unconnected_records_are_bounded_per_sender_and_expire() -> None:
    membership = _membership()
    identities = [NodeIdentity.generate(f"n{i}") for i in range(MAX_PENDING_PER_SENDER + 5)]
    verdicts = [membership.consider(sign_record(i, _record(i)), 0.0, NodeId("flooder")) for i in identities]
    assert verdicts.count("accepted") == MAX_PENDING_PER_SENDER
    assert verdicts.count("full") == 5
    # Another sender still has room, and connecting a node frees the flooder's share.
    late = NodeIdentity.generate("late")
    assert membership.consider(sign_record(late, _record(late)), 0.0, NodeId("honest")) == "accepted"
    membership.mark_connected(NodeId("n0"), now=0.0)
    extra = identities[-1]
    assert membership.consider(sign_record(extra, _record(extra)), 0.0, NodeId("flooder")) == "accepted"
    # Nobody gossips them again: every unconnected record expires, the connected one stays.
    assert membership.consider(sign_record(late, _record(late)), 20.0, NodeId("honest")) == "unchanged"
    expired = membership.expire(now=RECORD_TTL_S + 1.0)
    assert NodeId("n0") not in expired and NodeId("late") not in expired
    assert len(expired) == MAX_PENDING_PER_SENDER
    assert membership.record_of(NodeId("n0")) is not None


def test_a_whitelist_entry_can_pin_the_key_of_its_node() -> None:
    genuine, impostor = (
        NodeIdentity.generate("a"),
        NodeIdentity(NodeId("a"), NodeIdentity.generate("x").private_key),
    )
    membership = Membership(
        NodeIdentity.generate("self"),
        (f"a@{genuine.public_key.hex()}", "b"),
        PinnedKeys(),
        departed_memory_s=10.0,
    )
    assert membership.allows(NodeId("a")) and membership.allows(NodeId("b"))
    assert not membership.allows(NodeId(f"a@{genuine.public_key.hex()}"))
    assert membership.consider(sign_record(impostor, _record(impostor)), now=0.0) == "key_conflict"
    assert membership.consider(sign_record(genuine, _record(genuine)), now=0.0) == "accepted"
