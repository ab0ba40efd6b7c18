"""Peers that serve a tiny model's weights, in the test's process, over real sockets."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

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


class TreeHub:
    """A local HTTP server answering the hub's file listing (``list_repo_tree``) for one repository.

    Each file of ``folder`` is listed with its size; safetensors files, as on the hub, as LFS
    files with the SHA-256 of their bytes. Use as a context manager; ``url`` is its HF_ENDPOINT.
    """

    def __init__(self, repo: str, folder: Path) -> None:
        entries: list[dict[str, object]] = []
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue
            data = path.read_bytes()
            entry: dict[str, object] = {"type": "file", "path": path.name, "size": len(data), "oid": "0" * 40}
            if path.suffix == ".safetensors":
                sha256 = hashlib.sha256(data).hexdigest()
                entry["lfs"] = {"oid": sha256, "size": len(data), "pointerSize": 134}
            entries.append(entry)
        listing = json.dumps(entries).encode()
        tree_path = f"/api/models/{repo}/tree/main"

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass  # keep the test output clean

            def do_GET(self) -> None:
                found = urlsplit(self.path).path.rstrip("/") == tree_path
                body = listing if found else b'{"error": "Repository not found"}'
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> TreeHub:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def closed_port_url() -> str:
    """An HF_ENDPOINT nothing listens on: the hub, unreachable."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"
