"""Weights from peers, in this process over real sockets: only the needed layers, verified, resumable."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path

import pytest
import torch

from language_pipes.models.partial import ModelSource
from language_pipes.models.store import ModelStore, ModelStoreError
from language_pipes.models.weights import MissingTensorError, WeightReader
from language_pipes.network.types import NodeId, PeerUnavailableError
from language_pipes.weights.journal import held_tensors
from language_pipes.weights.manifest import MANIFEST_FILE, MANIFEST_STAT_FILE, build_manifest, tensor_names
from language_pipes.weights.provider import ModelWeights, layer_modules, tensors_for_modules
from language_pipes.weights.serve import KIND_MANIFEST, KIND_PIECE
from language_pipes.weights.transfer import PeerFetchError
from support.peers import Starter, wait_until
from support.tiny_models import build_tiny_model
from support.weight_peers import (
    TEST_BLOCK_BYTES,
    TINY_MODEL,
    TreeHub,
    closed_port_url,
    corrupt_tensor_bytes,
    fetching_peer,
    serving_peer,
    tiny_store,
)

LAYER_TWO = "model.layers.2."


@pytest.fixture(autouse=True)
def unreachable_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test here asks the real hub: HF_ENDPOINT points where nothing listens (a test may move it)."""
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def _reference(tmp_path: Path) -> ModelStore:
    return tiny_store(tmp_path / "reference")


@pytest.mark.asyncio
async def test_fetches_only_the_needed_layers_from_both_peers(start_node: Starter, tmp_path: Path) -> None:
    key = os.urandom(16)
    reference = _reference(tmp_path)
    a = await serving_peer(start_node, "a", reference, key)
    b = await serving_peer(
        start_node, "b", tiny_store(tmp_path / "b", reference.local_path(TINY_MODEL)), key, (a.network,)
    )
    _, fetcher = await fetching_peer(start_node, "c", key, [a, b])
    manifest, holders = await fetcher.manifest(TINY_MODEL)
    assert set(holders) == {"a", "b"}
    wanted = {name for name in tensor_names(manifest) if name.startswith(LAYER_TWO)}
    folder = tmp_path / "c" / "fetched"
    fetched = await fetcher.fetch(folder, manifest, holders, wanted)

    assert held_tensors(folder) == wanted
    assert fetched < manifest.total_bytes() / 2
    assert set(fetcher.progress[TINY_MODEL].by_peer) == {"a", "b"}  # both peers sent pieces
    line = fetcher.progress[TINY_MODEL].line()  # what the TUI's Models page shows
    assert line.startswith(f"{TINY_MODEL}: done,") and "MB/s from a (" in line and ", b (" in line
    reader = WeightReader(folder)
    original = WeightReader(reference.local_path(TINY_MODEL))
    got = reader.read(reader.names_with_prefix(LAYER_TWO), torch.float32, torch.device("cpu"))
    expected = original.read(original.names_with_prefix(LAYER_TWO), torch.float32, torch.device("cpu"))
    assert got.keys() == expected.keys() and all(torch.equal(got[n], expected[n]) for n in got)
    with pytest.raises(MissingTensorError):
        reader.read(["model.embed_tokens.weight"], torch.float32, torch.device("cpu"))


@pytest.mark.asyncio
async def test_bad_bytes_from_one_peer_are_refetched_from_another_and_reported(
    start_node: Starter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = os.urandom(16)
    reference = _reference(tmp_path)
    rotten = tiny_store(tmp_path / "rotten", reference.local_path(TINY_MODEL))
    corrupt_tensor_bytes(rotten)  # its cached manifest still describes the good bytes
    a = await serving_peer(start_node, "a", reference, key)
    b = await serving_peer(start_node, "b", rotten, key, (a.network,))
    _, fetcher = await fetching_peer(start_node, "c", key, [a, b])
    manifest, holders = await fetcher.manifest(TINY_MODEL)
    folder = tmp_path / "c" / "fetched"
    with caplog.at_level(logging.WARNING, "language_pipes.weights.fetch"):
        await fetcher.fetch(folder, manifest, holders, None)

    assert fetcher.bad_pieces["b"] > 0 and fetcher.bad_pieces["a"] == 0
    assert "peer b sent bad bytes" in caplog.text
    good = reference.local_path(TINY_MODEL) / "model.safetensors"
    assert (folder / "model.safetensors").read_bytes() == good.read_bytes()


@pytest.mark.asyncio
async def test_an_interrupted_fetch_resumes_without_refetching_verified_pieces(
    start_node: Starter, tmp_path: Path
) -> None:
    key = os.urandom(16)
    reference = _reference(tmp_path)
    total = build_manifest(reference.local_path(TINY_MODEL), TINY_MODEL, TEST_BLOCK_BYTES).total_bytes()
    a = await serving_peer(start_node, "a", reference, key, bytes_per_s=total)  # about a second in all
    _, fetcher = await fetching_peer(start_node, "c", key, [a])
    manifest, holders = await fetcher.manifest(TINY_MODEL)
    folder = tmp_path / "c" / "fetched"
    first = asyncio.create_task(fetcher.fetch(folder, manifest, holders, None))
    await wait_until(lambda: len(fetcher.fetched_pieces) >= 10, what="some pieces arriving")
    first.cancel()  # the kill: no clean-up runs for the pieces in flight
    with pytest.raises(asyncio.CancelledError):
        await first
    before = {key for key, _ in fetcher.fetched_pieces}
    assert held_tensors(folder) is None  # nothing counts as held until the fetch completes

    _, again = await fetching_peer(start_node, "d", key, [a])
    await again.fetch(folder, manifest, holders={NodeId("a"): None}, tensors=None)
    after = {key for key, _ in again.fetched_pieces}
    assert before and after and not before & after
    assert again.progress[TINY_MODEL].reused_bytes > 0
    good = reference.local_path(TINY_MODEL) / "model.safetensors"
    assert (folder / "model.safetensors").read_bytes() == good.read_bytes()


@pytest.mark.asyncio
async def test_requests_outside_the_hosted_models_are_refused(start_node: Starter, tmp_path: Path) -> None:
    key = os.urandom(16)
    a = await serving_peer(start_node, "a", _reference(tmp_path), key)
    (tmp_path / "reference" / "secret.safetensors").write_bytes(b"x" * 64)
    c, fetcher = await fetching_peer(start_node, "c", key, [a])
    manifest, _ = await fetcher.manifest(TINY_MODEL)
    piece = {"model_id": TINY_MODEL, "file": "config.json", "start": 0, "end": manifest.files[0].size}

    for model_id in ("other-org/not-hosted", "../../etc", None):
        header, _ = await c.request(NodeId("a"), KIND_MANIFEST, {"model_id": model_id})
        assert "does not host" in header["refused"]
    for file in ("../secret.safetensors", "/etc/passwd", "../../reference/secret.safetensors"):
        header, payload = await c.request(NodeId("a"), KIND_PIECE, {**piece, "file": file})
        assert "no such piece" in header["refused"] and payload == b""
    header, payload = await c.request(NodeId("a"), KIND_PIECE, {**piece, "end": 10**9})
    assert "refused" in header and payload == b""
    assert a.server.bytes_served == 0


@pytest.mark.asyncio
async def test_a_node_with_another_network_key_gets_nothing(start_node: Starter, tmp_path: Path) -> None:
    a = await serving_peer(start_node, "a", _reference(tmp_path), os.urandom(16))
    outsider = await start_node("outsider", network_key=os.urandom(16), bootstrap=(a.network,))
    await asyncio.sleep(1.5)  # time enough to join, were the key right
    assert NodeId("a") not in outsider.records()
    with pytest.raises(PeerUnavailableError):
        await outsider.request(NodeId("a"), KIND_MANIFEST, {"model_id": TINY_MODEL}, timeout=2)
    assert a.server.bytes_served == 0


@pytest.mark.asyncio
async def test_auto_falls_back_to_peers_when_the_hub_is_unreachable(
    start_node: Starter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    key = os.urandom(16)
    a = await serving_peer(start_node, "a", _reference(tmp_path), key)
    _, fetcher = await fetching_peer(start_node, "c", key, [a])
    weights = ModelWeights(ModelStore(tmp_path / "empty"), fetcher)
    with pytest.raises(ModelStoreError, match="no connection to the hub"):
        await weights.planning_folder(TINY_MODEL, "hub")

    planning = ModelSource.open(await weights.planning_folder(TINY_MODEL, "auto"))
    assert planning.num_layers == 4 and not weights.store.is_installed(TINY_MODEL)
    wanted = tensors_for_modules(planning.reader, layer_modules(1, 3))
    folder = await weights.ensure_tensors(TINY_MODEL, planning.folder, wanted)
    assert folder == weights.store.local_path(TINY_MODEL) and weights.store.is_installed(TINY_MODEL)
    source = ModelSource.open(folder)
    source.load_module("model.layers.2", torch.float32, torch.device("cpu"))
    with pytest.raises(MissingTensorError):
        source.load_module("model.layers.3", torch.float32, torch.device("cpu"))

    # Placement later gives this node layer 3 too: only its tensors are fetched, into the same folder.
    already = len(fetcher.fetched_pieces)
    more = tensors_for_modules(source.reader, layer_modules(3, 4))
    assert await weights.ensure_tensors(TINY_MODEL, folder, wanted | more) == folder
    assert {key for key, _ in fetcher.fetched_pieces[already:]} and held_tensors(folder) == wanted | more
    source.load_module("model.layers.3", torch.float32, torch.device("cpu"))


@pytest.mark.asyncio
async def test_a_peer_leaving_mid_fetch_leaves_its_pieces_to_the_other(
    start_node: Starter, tmp_path: Path
) -> None:
    key = os.urandom(16)
    reference = _reference(tmp_path)
    total = build_manifest(reference.local_path(TINY_MODEL), TINY_MODEL, TEST_BLOCK_BYTES).total_bytes()
    a = await serving_peer(start_node, "a", reference, key, bytes_per_s=total)
    copy = tiny_store(tmp_path / "b", reference.local_path(TINY_MODEL))
    b = await serving_peer(start_node, "b", copy, key, (a.network,), bytes_per_s=total)
    _, fetcher = await fetching_peer(start_node, "c", key, [a, b])
    manifest, holders = await fetcher.manifest(TINY_MODEL)
    folder = tmp_path / "c" / "fetched"
    fetch = asyncio.create_task(fetcher.fetch(folder, manifest, holders, None))
    await wait_until(lambda: any(peer == "b" for _, peer in fetcher.fetched_pieces), what="b sending")
    await b.network.stop()
    await fetch
    good = reference.local_path(TINY_MODEL) / "model.safetensors"
    assert (folder / "model.safetensors").read_bytes() == good.read_bytes()


@pytest.mark.asyncio
async def test_the_hub_hashes_choose_between_manifests_and_refuse_those_it_disagrees_with(
    start_node: Starter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = os.urandom(16)
    reference = _reference(tmp_path)
    other = tiny_store(tmp_path / "other", reference.local_path(TINY_MODEL))
    corrupt_tensor_bytes(other)  # another version of the weights, with a manifest that describes it
    for cached in (MANIFEST_FILE, MANIFEST_STAT_FILE):
        (other.local_path(TINY_MODEL) / cached).unlink()
    build_manifest(other.local_path(TINY_MODEL), TINY_MODEL, TEST_BLOCK_BYTES)
    a = await serving_peer(start_node, "a", reference, key)
    b = await serving_peer(start_node, "b", other, key, (a.network,))
    _, fetcher = await fetching_peer(start_node, "c", key, [a, b])
    with pytest.raises(PeerFetchError, match="pin one"):  # hub unreachable: one peer each, a tie
        await fetcher.manifest(TINY_MODEL)

    expected = build_manifest(reference.local_path(TINY_MODEL), TINY_MODEL, TEST_BLOCK_BYTES)
    with TreeHub(TINY_MODEL, reference.local_path(TINY_MODEL)) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        manifest, holders = await fetcher.manifest(TINY_MODEL)
    assert manifest.digest() == expected.digest() and set(holders) == {"a"}

    stranger = tmp_path / "stranger"  # a third checkpoint, initialised from another seed
    build_tiny_model("llama", stranger, seed=1)
    with TreeHub(TINY_MODEL, stranger) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(PeerFetchError, match="agrees with the hub"):
            await fetcher.manifest(TINY_MODEL)
