"""Node identity keys on disk and signatures."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from language_pipes.network.identity import (
    NodeIdentity,
    key_file_for,
    load_or_create_identity,
    signature_is_valid,
)


def test_identity_is_created_once_with_private_permissions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LP_APP_DIR", str(tmp_path))
    first = load_or_create_identity("node-1")
    path = tmp_path / "credentials" / "node-1.key"
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = load_or_create_identity("node-1")
    assert second.public_key == first.public_key
    assert load_or_create_identity("node-2").public_key != first.public_key


def test_unsafe_node_ids_get_hashed_file_names(tmp_path: Path) -> None:
    path = key_file_for("../../etc/passwd", tmp_path)
    assert path.parent == tmp_path
    assert path.name.startswith("id-")
    assert key_file_for("../../etc/passwd", tmp_path) == path
    assert key_file_for("../../etc/other", tmp_path) != path


def test_signatures_verify_only_with_the_signers_key() -> None:
    alice, mallory = NodeIdentity.generate("alice"), NodeIdentity.generate("mallory")
    signature = alice.sign(b"message")
    assert signature_is_valid(alice.public_key, signature, b"message")
    assert not signature_is_valid(alice.public_key, signature, b"other message")
    assert not signature_is_valid(mallory.public_key, signature, b"message")
    assert not signature_is_valid(b"short", signature, b"message")
