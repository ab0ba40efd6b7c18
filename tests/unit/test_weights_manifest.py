"""Manifests, piece plans and the resume journal of weights from peers, on a tiny model folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from language_pipes.weights.hub_hashes import HubFile, disagreements
from language_pipes.weights.journal import Journal
from language_pipes.weights.manifest import (
    Manifest,
    ManifestError,
    build_manifest,
    file_pieces,
    parse_manifest,
    pieces_for,
    tensor_names,
)
from support.tiny_models import build_tiny_model

MODEL = "test-org/tiny"
BLOCK = 4096


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model("llama", tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def manifest(folder: Path) -> Manifest:
    return build_manifest(folder, MODEL, BLOCK)


def test_pieces_cover_every_byte_of_every_file_exactly_once(folder: Path, manifest: Manifest) -> None:
    for entry in manifest.files:
        pieces = file_pieces(manifest, entry)
        covered = sorted((piece.start, piece.end) for piece in pieces)
        assert all(piece.size <= BLOCK or piece.tensor is None and piece.start == 0 for piece in pieces)
        if entry.name.endswith(".safetensors"):
            # Header and tensors tile the file: each piece starts where the one before ended.
            assert covered[0][0] == 0 and covered[-1][1] == entry.size
            assert all(a[1] == b[0] for a, b in zip(covered, covered[1:], strict=False))
    assert {entry.name for entry in manifest.files} >= {"config.json", "model.safetensors", "tokenizer.json"}


def test_the_manifest_is_cached_until_a_file_changes(folder: Path, manifest: Manifest) -> None:
    assert build_manifest(folder, MODEL, BLOCK) == manifest
    config = folder / "config.json"
    original = config.read_text()
    try:
        config.write_text(original.replace("{", '{"edited": 1, ', 1))
        rebuilt = build_manifest(folder, MODEL, BLOCK)
        assert rebuilt.digest() != manifest.digest()
    finally:
        config.write_text(original)
    assert build_manifest(folder, MODEL, BLOCK).digest() == manifest.digest()


def test_a_plan_takes_only_the_named_tensors_and_every_small_file(manifest: Manifest) -> None:
    layer = {name for name in tensor_names(manifest) if name.startswith("model.layers.1.")}
    plan = pieces_for(manifest, layer)
    assert {piece.tensor for piece in plan if piece.tensor is not None} == layer
    assert {piece.file for piece in plan if piece.tensor is None} == {entry.name for entry in manifest.files}
    assert sum(piece.size for piece in plan) < sum(piece.size for piece in pieces_for(manifest, None)) / 3


@pytest.mark.parametrize("name", ["../config.json", "/etc/passwd", ".hidden", "a/b.json", "..", "x\\y"])
def test_file_names_that_could_leave_the_folder_are_rejected(manifest: Manifest, name: str) -> None:
    body = json.loads(manifest.canonical_json())
    body["files"][0]["name"] = name
    with pytest.raises(ManifestError, match="not a plain file name"):
        parse_manifest(json.dumps(body))


def test_bytes_left_unhashed_are_rejected(manifest: Manifest) -> None:
    body = json.loads(manifest.canonical_json())
    weights = next(entry for entry in body["files"] if entry["tensors"])
    weights["tensors"][0]["blocks"] = []
    with pytest.raises(ManifestError, match="not covered"):
        parse_manifest(json.dumps(body))


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_is_never_a_manifest(raw: bytes) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(raw)


def test_the_journal_keeps_only_pieces_whose_bytes_still_match(
    folder: Path, manifest: Manifest, tmp_path: Path
) -> None:
    target = tmp_path / "fetched"
    target.mkdir()
    data = (folder / "model.safetensors").read_bytes()
    (target / "model.safetensors").write_bytes(data)
    pieces = [piece for piece in pieces_for(manifest, None) if piece.file == "model.safetensors"]
    journal = Journal(target, manifest)
    for piece in pieces[:6]:
        journal.record(piece)
    with (target / "model.safetensors").open("r+b") as handle:  # one journaled piece rots on disk
        handle.seek(pieces[3].start)
        handle.write(bytes(byte ^ 1 for byte in data[pieces[3].start : pieces[3].start + 4]))
    with (target / ".lp-journal").open("a") as handle:
        handle.write("cut short by a kil")  # a kill mid-line

    resumed = Journal(target, manifest)
    kept = resumed.recover(pieces)
    assert resumed.verified == {piece.key for index, piece in enumerate(pieces[:6]) if index != 3}
    assert kept == sum(piece.size for index, piece in enumerate(pieces[:6]) if index != 3)


def test_a_manifest_agrees_with_the_hub_only_on_every_size_and_published_hash(
    folder: Path, manifest: Manifest
) -> None:
    hub = {entry.name: HubFile(entry.size, None) for entry in manifest.files}
    weights = next(entry for entry in manifest.files if entry.name.endswith(".safetensors"))
    hub[weights.name] = HubFile(weights.size, weights.sha256)
    assert disagreements(manifest, hub) == []
    assert disagreements(manifest, {weights.name: hub[weights.name]}) == []  # unlisted small files pass

    other_hash = {**hub, weights.name: HubFile(weights.size, "0" * 64)}
    assert [p.split(" ")[0] for p in disagreements(manifest, other_hash)] == [weights.name]
    other_size = {**hub, "config.json": HubFile(1, None)}
    assert ["config.json is" in p for p in disagreements(manifest, other_size)] == [True]
    unlisted_weights = {name: file for name, file in hub.items() if name != weights.name}
    assert disagreements(manifest, unlisted_weights) == [f"{weights.name} is not on the hub"]
