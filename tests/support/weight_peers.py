"""Peers that serve a tiny model's weights, in the test's process, over real sockets."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from language_pipes.models.store import ModelStore
from language_pipes.network.peer_network import PeerNetwork
from language_pipes.weights.fetch import WeightFetcher
from language_pipes.weights.manifest import build_manifest
from language_pipes.weights.serve import WeightServer
from support.peers import Starter, wait_until
from support.tiny_models import build_tiny_model

TINY_MODEL = "test-org/tiny-llama"
# Small pieces, so a tiny model still has many of them.
TEST_BLOCK_BYTES = 8192


@dataclass
class ServingPeer:
    network: PeerNetwork
    store: ModelStore
    server: WeightServer


def tiny_store(root: Path, source: Path | None = None) -> ModelStore:
    """A model store holding the tiny model (copied from ``source``, else built), its manifest built."""
    store = ModelStore(root)
    folder = store.local_path(TINY_MODEL)
    if source is None:
        build_tiny_model("llama", folder)
    else:
        shutil.copytree(source, folder)
    build_manifest(folder, TINY_MODEL, TEST_BLOCK_BYTES)
    return store


def corrupt_tensor_bytes(store: ModelStore) -> None:
    """Flip every tensor byte of the model's weights, keeping size and mtime (bit rot the cache misses)."""
    manifest = build_manifest(store.local_path(TINY_MODEL), TINY_MODEL, TEST_BLOCK_BYTES)
    for entry in manifest.files:
        path = store.local_path(TINY_MODEL) / entry.name
        info = path.stat()
        with path.open("r+b") as handle:
            for tensor in entry.tensors:
                handle.seek(tensor.start)
                data = handle.read(tensor.end - tensor.start)
                handle.seek(tensor.start)
                handle.write(bytes(byte ^ 0xFF for byte in data))
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


async def serving_peer(
    start_node: Starter,
    name: str,
    store: ModelStore,
    key: bytes,
    bootstrap: tuple[PeerNetwork, ...] = (),
    bytes_per_s: int = 50_000_000,
) -> ServingPeer:
    network = await start_node(name, network_key=key, bootstrap=bootstrap)
    server = WeightServer(
        network, store, lambda: {TINY_MODEL}, bytes_per_s=bytes_per_s, block_bytes=TEST_BLOCK_BYTES
    )
    network.set_local_record(end_models=[TINY_MODEL])
    return ServingPeer(network, store, server)


async def fetching_peer(
    start_node: Starter, name: str, key: bytes, servers: list[ServingPeer]
) -> tuple[PeerNetwork, WeightFetcher]:
    network = await start_node(name, network_key=key, bootstrap=tuple(s.network for s in servers))
    fetcher = WeightFetcher(network, peer_wait_s=5.0)
    await wait_until(lambda: len(fetcher.peers_with(TINY_MODEL)) == len(servers), what="peers meeting")
    return network, fetcher
