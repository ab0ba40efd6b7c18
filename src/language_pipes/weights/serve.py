"""Serving model weights to peers: manifests and pieces of hosted models, bounded in rate and concurrency.

Two request kinds over the encrypted peer session (so only a node that completed the
keyed handshake can ask at all):

* ``weights.manifest`` ``{"model_id"}`` -> payload ``{"manifest": ..., "held": [tensor names] | null}``;
* ``weights.piece`` ``{"model_id", "file", "start", "end"}`` -> the piece's bytes.

Only models this node hosts right now (``hosted()``) are served, and only exact pieces of
their manifest: a file name that is not in the manifest (``../x``, an absolute path) is
refused before any path is built, and the path built is checked to lie in the store.
A refusal is a reply with a ``refused`` reason, not an error. Bytes leave through a token
bucket (``bytes_per_s``) and at most ``concurrency`` pieces are read at once; a request
beyond that is refused as ``busy`` so the fetcher asks again or asks another peer.
Pieces are read, and their replies sealed, on the low-priority bulk threads
(:mod:`language_pipes.network.bulk`), so serving takes CPU only when the node's own decode
steps leave some.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from language_pipes.models.store import ModelStore, ModelStoreError, is_complete_model_folder
from language_pipes.network.bulk import run_bulk
from language_pipes.network.connections import Header, Reply
from language_pipes.network.peer_network import PeerNetwork
from language_pipes.network.types import NodeId
from language_pipes.weights.journal import held_tensors, stored_manifest
from language_pipes.weights.manifest import Manifest, Piece, build_manifest, file_pieces

log = logging.getLogger(__name__)

KIND_MANIFEST = "weights.manifest"
KIND_PIECE = "weights.piece"
DEFAULT_SERVE_BYTES_PER_S = 50_000_000
DEFAULT_SERVE_CONCURRENCY = 4
# How long a model's folder, once looked at, is trusted unchanged by piece requests.
RECHECK_S = 2.0


class ByteBucket:
    """A token bucket of bytes: ``await take(n)`` returns once ``n`` bytes may leave."""

    def __init__(self, bytes_per_s: float, burst: int) -> None:
        self.rate = float(bytes_per_s)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self, count: int) -> None:
        async with self._lock:  # one waiter at a time keeps the order fair
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            self._tokens -= count
            if self._tokens < 0:
                await asyncio.sleep(-self._tokens / self.rate)


class WeightServer:
    """Answers manifest and piece requests for the models ``hosted()`` names."""

    def __init__(
        self,
        network: PeerNetwork,
        store: ModelStore,
        hosted: Callable[[], set[str]],
        *,
        bytes_per_s: int = DEFAULT_SERVE_BYTES_PER_S,
        concurrency: int = DEFAULT_SERVE_CONCURRENCY,
        block_bytes: int | None = None,
    ) -> None:
        self.store = store
        self.hosted = hosted
        self.bucket = ByteBucket(bytes_per_s, burst=max(1, bytes_per_s // 10))
        self.concurrency = concurrency
        self.block_bytes = block_bytes
        self.active = 0
        self.bytes_served = 0
        self.refused: dict[str, int] = {}
        self._manifests: dict[str, tuple[Manifest, set[str] | None, dict[str, Piece]]] = {}
        self._checked: dict[str, float] = {}  # when each model's folder was last looked at on disk
        network.register_handler(KIND_MANIFEST, self._on_manifest)
        network.register_handler(KIND_PIECE, self._on_piece)

    async def _on_manifest(self, sender: NodeId, header: Header, payload: bytes) -> Reply:
        model_id = header.get("model_id") if isinstance(header, dict) else None
        served = await asyncio.to_thread(self._served, model_id)
        if isinstance(served, str):
            return self._refuse(sender, served)
        manifest, held, _ = served
        body = {
            "manifest": json.loads(manifest.canonical_json()),
            "held": sorted(held) if held is not None else None,
        }
        return {"sha256": manifest.digest()}, json.dumps(body).encode()

    async def _on_piece(self, sender: NodeId, header: Header, payload: bytes) -> Reply:
        if not isinstance(header, dict):
            return self._refuse(sender, "malformed request")
        served = self._recently_served(header.get("model_id"))
        if served is None:
            served = await asyncio.to_thread(self._served, header.get("model_id"))
        if isinstance(served, str):
            return self._refuse(sender, served)
        manifest, held, pieces = served
        piece = pieces.get(f"{header.get('file')}:{header.get('start')}")
        if piece is None or piece.end != header.get("end"):
            return self._refuse(sender, f"no such piece: {str(header.get('file'))[:80]!r}")
        if held is not None and piece.tensor is not None and piece.tensor not in held:
            return self._refuse(sender, f"this node does not hold {piece.tensor}")
        folder = self.store.local_path(manifest.model_id).resolve()
        path = (folder / piece.file).resolve()
        if path.parent != folder or not path.is_relative_to(self.store.root.resolve()):
            return self._refuse(sender, "path outside the model store")
        if self.active >= self.concurrency:
            return self._refuse(sender, "busy", quiet=True)
        self.active += 1
        try:
            await self.bucket.take(piece.size)
            data = await run_bulk(_read_range, path, piece.start, piece.size)
        finally:
            self.active -= 1
        self.bytes_served += len(data)
        return {"ok": True}, data

    async def prepare(self, model_ids: list[str]) -> None:
        """Build (or load from cache) the manifests of ``model_ids`` before any peer asks."""
        for model_id in model_ids:
            served = await asyncio.to_thread(self._served, model_id)
            if not isinstance(served, str):
                log.info("serving weights of %s to peers: manifest sha256 %s", model_id, served[0].digest())

    def _recently_served(self, model_id: object) -> tuple[Manifest, set[str] | None, dict[str, Piece]] | None:
        """The cached answer of :meth:`_served` while it is fresh (no disk look-up per piece); else None."""
        if not isinstance(model_id, str) or model_id not in self.hosted():
            return None
        checked = self._checked.get(model_id)
        if checked is None or time.monotonic() - checked > RECHECK_S:
            return None
        return self._manifests.get(model_id)

    def _served(self, model_id: object) -> tuple[Manifest, set[str] | None, dict[str, Piece]] | str:
        """The manifest, held tensors and pieces of a hosted model; a refusal reason otherwise."""
        if not isinstance(model_id, str) or model_id not in self.hosted():
            return f"this node does not host {str(model_id)[:80]!r}"
        try:
            folder = self.store.local_path(model_id)
        except ModelStoreError as error:
            return str(error)
        if not is_complete_model_folder(folder):
            return f"{model_id} is not installed on this node"
        held = held_tensors(folder)
        self._checked[model_id] = time.monotonic()
        cached = self._manifests.get(model_id)
        if cached is not None and cached[1] == held:
            return cached
        manifest = stored_manifest(folder) if held is not None else None
        if manifest is None:
            block_bytes = self.block_bytes
            manifest = (
                build_manifest(folder, model_id)
                if block_bytes is None
                else build_manifest(folder, model_id, block_bytes)
            )
        pieces = {piece.key: piece for entry in manifest.files for piece in file_pieces(manifest, entry)}
        self._manifests[model_id] = (manifest, held, pieces)
        return manifest, held, pieces

    def _refuse(self, sender: NodeId, reason: str, quiet: bool = False) -> Reply:
        self.refused[reason.split(":")[0]] = self.refused.get(reason.split(":")[0], 0) + 1
        if not quiet:
            log.warning("refused a weights request from %s: %s", sender, reason)
        return {"refused": reason}, b""


def _read_range(path: Path, start: int, size: int) -> bytes:
    with path.open("rb") as handle:
        handle.seek(start)
        return handle.read(size)
