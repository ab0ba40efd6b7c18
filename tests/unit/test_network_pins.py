"""Pinned identity keys: pinned only on proof, kept in a 0600 file, re-keying by deleting a line."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from language_pipes.network.pins import PinnedKeys, known_nodes_file
from language_pipes.network.types import NodeId

KEY_A, KEY_B = b"\x01" * 32, b"\x02" * 32


def test_checking_a_key_pins_nothing() -> None:
    pins = PinnedKeys()
    assert not pins.conflicts(NodeId("a"), KEY_A)
    assert not pins.conflicts(NodeId("a"), KEY_B)  # nothing was pinned by the first check
    assert pins.pin(NodeId("a"), KEY_B)
    assert pins.conflicts(NodeId("a"), KEY_A)
    assert not pins.pin(NodeId("a"), KEY_A)


def test_pins_persist_in_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "known_nodes" / "me.txt"
    PinnedKeys(path).pin(NodeId("node with spaces"), KEY_A)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = PinnedKeys(path)
    assert again.pinned(NodeId("node with spaces")) == KEY_A
    assert again.conflicts(NodeId("node with spaces"), KEY_B)


def test_deleting_a_line_trusts_the_re_keyed_node_without_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "pins.txt"
    pins = PinnedKeys(path)
    pins.pin(NodeId("a"), KEY_A)
    pins.pin(NodeId("b"), KEY_A)
    assert pins.conflicts(NodeId("a"), KEY_B)
    path.write_text("".join(line + "\n" for line in path.read_text().splitlines() if '"a"' not in line))
    assert not pins.conflicts(NodeId("a"), KEY_B)
    assert pins.pin(NodeId("a"), KEY_B)
    assert pins.conflicts(NodeId("b"), KEY_B)  # the other pin stays


def test_a_damaged_line_is_skipped_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "pins.txt"
    path.write_text(f'garbage\n{KEY_A.hex()} "a"\n')
    assert PinnedKeys(path).pinned(NodeId("a")) == KEY_A
    assert "line 1 ignored" in caplog.text


def test_the_file_lives_under_lp_app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LP_APP_DIR", str(tmp_path))
    assert known_nodes_file("node-1") == tmp_path / "known_nodes" / "node-1.txt"
    assert known_nodes_file("../evil").parent == tmp_path / "known_nodes"


def test_pins_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("language_pipes.network.pins.MAX_PINNED_KEYS", 3)
    pins = PinnedKeys(tmp_path / "pins.txt")
    for index in range(10):
        assert pins.pin(NodeId(f"n{index}"), KEY_A)
    assert len((tmp_path / "pins.txt").read_text().splitlines()) == 3
    assert pins.conflicts(NodeId("n0"), KEY_B)
