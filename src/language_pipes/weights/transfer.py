"""One fetch of a model's pieces in flight: a worker pool per peer draining one queue of pieces.

Each piece is hashed before it is written and journaled; one that fails its hash is asked
of another peer and the peer that sent it is reported. A peer that is lost for a while is
waited for a little longer each time; a piece fails only after
:data:`MAX_ATTEMPTS_PER_PIECE` tries or when no peer that holds it is left.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import tqdm

from language_pipes.models.store import ModelStoreError
from language_pipes.network.types import NetworkError, NodeId, PeerUnavailableError
from language_pipes.weights.journal import Journal, write_stored_manifest
from language_pipes.weights.manifest import Manifest, Piece
from language_pipes.weights.progress import FetchProgress
from language_pipes.weights.serve import KIND_PIECE

if TYPE_CHECKING:
    from language_pipes.weights.fetch import WeightFetcher

log = logging.getLogger("language_pipes.weights.fetch")  # one logger for the whole fetch

REQUEST_TIMEOUT_S = 60.0
MAX_ATTEMPTS_PER_PIECE = 8
BUSY_BACKOFF_S = 0.05
PEER_RETRY_S = 0.5
PEER_RETRY_MAX_S = 4.0


class PeerFetchError(ModelStoreError):
    """The model could not be fetched from peers; the message says why."""


@dataclass
class Pending:
    piece: Piece
    attempts: int = 0
    excluded: set[str] = field(default_factory=set)


@dataclass
class PieceRun:
    """One fetch in flight: a worker pool per peer draining one queue of pending pieces."""

    fetcher: WeightFetcher
    folder: Path
    manifest: Manifest
    holders: dict[NodeId, set[str] | None]
    pending: deque[Pending]
    journal: Journal
    progress: FetchProgress
    bar: tqdm.tqdm  # type: ignore[type-arg]
    in_flight: int = 0
    failure: PeerFetchError | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    async def all(self) -> None:
        workers = [
            asyncio.create_task(self._worker(peer))
            for peer in self.holders
            for _ in range(self.fetcher.requests_per_peer)
        ]
        every_worker = asyncio.gather(*workers)
        finished = asyncio.create_task(self.finished.wait())
        try:
            # Done when every piece is in (workers backing off from a lost peer need not wake up first).
            await asyncio.wait([every_worker, finished], return_when=asyncio.FIRST_COMPLETED)
        finally:
            finished.cancel()
            for worker in workers:
                worker.cancel()
            await asyncio.gather(every_worker, return_exceptions=True)
        if self.failure is not None:
            raise self.failure
        if self.pending:
            left = len(self.pending)
            raise PeerFetchError(self.manifest.model_id, f"{left} pieces could not be fetched from any peer")

    def _next_for(self, peer: NodeId) -> Pending | None:
        for index, item in enumerate(self.pending):
            held = self.holders[peer]
            if peer not in item.excluded and (
                item.piece.tensor is None or held is None or item.piece.tensor in held
            ):
                del self.pending[index]
                return item
        return None

    def _nobody_can(self, item: Pending) -> bool:
        usable = [
            peer
            for peer, held in self.holders.items()
            if peer not in item.excluded
            and (item.piece.tensor is None or held is None or item.piece.tensor in held)
        ]  # fmt: skip
        return not usable or item.attempts >= MAX_ATTEMPTS_PER_PIECE

    async def _worker(self, peer: NodeId) -> None:
        while self.failure is None:
            item = self._next_for(peer)
            if item is None:
                if not self.pending and self.in_flight == 0:
                    return
                if self.in_flight == 0 and all(self._nobody_can(waiting) for waiting in self.pending):
                    self._fail(self.pending[0])  # every peer that could send them is gone or failed
                    return
                await asyncio.sleep(BUSY_BACKOFF_S)
                continue
            self.in_flight += 1
            try:
                await self._fetch_one(peer, item)
            finally:
                self.in_flight -= 1
                if (not self.pending and self.in_flight == 0) or self.failure is not None:
                    self.finished.set()

    async def _fetch_one(self, peer: NodeId, item: Pending) -> None:
        piece, model_id = item.piece, self.manifest.model_id
        item.attempts += 1
        request = {"model_id": model_id, "file": piece.file, "start": piece.start, "end": piece.end}
        try:
            header, data = await self.fetcher.network.request(
                peer, KIND_PIECE, request, timeout=REQUEST_TIMEOUT_S
            )
        except PeerUnavailableError as error:
            # Lost for now (a stalled peer is dropped after the failure timeout and rejoins): wait a
            # little longer each time; the piece fails only after MAX_ATTEMPTS_PER_PIECE tries.
            log.warning("peer %s is unavailable while fetching %s: %s", peer, model_id, error)
            live_others = [
                other
                for other in self.holders
                if other != peer and other not in item.excluded and self.fetcher.network.is_live(other)
            ]
            if live_others:  # another peer takes it; this one may still serve other pieces later
                item.attempts -= 1
                self._requeue(item, exclude=peer)
            else:
                self._requeue(item)
            await asyncio.sleep(min(PEER_RETRY_MAX_S, PEER_RETRY_S * max(1, item.attempts)))
            return
        except NetworkError as error:
            # A timeout or a failed request: ask again (perhaps of another peer).
            log.warning("piece %s of %s from %s failed: %s", piece.key, model_id, peer, error)
            self._requeue(item)
            return
        refused = header.get("refused") if isinstance(header, dict) else "malformed reply"
        if refused == "busy":
            item.attempts -= 1  # a busy peer is no fault of the piece
            self._requeue(item)
            await asyncio.sleep(BUSY_BACKOFF_S)
            return
        if refused is not None:
            log.warning("peer %s refused piece %s of %s: %s", peer, piece.key, model_id, refused)
            self._requeue(item, exclude=peer)
            return
        if not await asyncio.to_thread(_verify_and_write, self.folder, piece, data):
            self.fetcher.bad_pieces[peer] += 1
            self.progress.bad_by_peer[peer] += 1
            log.warning(
                "peer %s sent bad bytes for %s of %s (SHA-256 mismatch); asking another peer",
                peer, piece.key, model_id,
            )  # fmt: skip
            self._requeue(item, exclude=peer)
            return
        self.journal.record(piece)
        self.progress.done_bytes += piece.size
        self.progress.by_peer[peer] += piece.size
        self.fetcher.fetched_pieces.append((piece.key, peer))
        self.fetcher.bytes_fetched += piece.size
        self.bar.set_postfix_str(self.progress.sources(), refresh=False)
        self.bar.update(piece.size)
        log.info(
            "piece %s %s (%d bytes) of %s from %s", piece.key, piece.tensor or "", piece.size, model_id, peer
        )

    def _requeue(self, item: Pending, exclude: str | None = None) -> None:
        if exclude is not None:
            item.excluded.add(exclude)
        if self._nobody_can(item):
            self._fail(item)
            return
        self.pending.append(item)

    def _fail(self, item: Pending) -> None:
        tried = ", ".join(sorted(item.excluded)) or "none"
        reason = f"piece {item.piece.key} failed from every peer that holds it (tried: {tried})"
        self.failure = PeerFetchError(self.manifest.model_id, reason)
        self.finished.set()


def prepare_files(folder: Path, manifest: Manifest) -> None:
    """Create the folder and every file at its full size (holes where nothing is fetched yet)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_stored_manifest(folder, manifest)
    for entry in manifest.files:
        path = folder / entry.name
        if not path.is_file() or path.stat().st_size != entry.size:
            with path.open("ab") as handle:
                handle.truncate(entry.size)


def _verify_and_write(folder: Path, piece: Piece, data: bytes) -> bool:
    if len(data) != piece.size or hashlib.sha256(data).hexdigest() != piece.sha256:
        return False
    with (folder / piece.file).open("r+b") as handle:
        handle.seek(piece.start)
        handle.write(data)
    return True
