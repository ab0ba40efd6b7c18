"""Fetching a model's pieces from peers: trusted manifest, several peers at once, verify, resume.

:meth:`WeightFetcher.manifest` asks every peer that hosts the model for its manifest
and trusts the one a pinned ``manifest_sha256`` names, else the one most peers serve
(a tie between different manifests is refused: pin one). :meth:`WeightFetcher.fetch`
writes the pieces a node needs into a folder (safetensors files keep their full size,
unfetched tensors stay file holes), several requests per peer in flight, each piece
hashed before it is written and journaled. A piece that fails its hash is asked of
another peer, and the peer that sent it is reported (logged, counted in ``bad_pieces``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import tqdm

from language_pipes.models.store import ModelStoreError
from language_pipes.network.peer_network import PeerNetwork
from language_pipes.network.types import NetworkError, NodeId, PeerUnavailableError
from language_pipes.weights.journal import Journal, held_tensors, write_held_tensors, write_stored_manifest
from language_pipes.weights.manifest import Manifest, ManifestError, Piece, parse_manifest, pieces_for
from language_pipes.weights.progress import MEGABYTE, FetchProgress
from language_pipes.weights.serve import KIND_MANIFEST, KIND_PIECE

log = logging.getLogger(__name__)

REQUESTS_PER_PEER = 4
REQUEST_TIMEOUT_S = 60.0
# A peer builds a model's manifest on first request (hashing every byte): give it time.
MANIFEST_TIMEOUT_S = 300.0
MAX_ATTEMPTS_PER_PIECE = 8
PEER_WAIT_S = 30.0
BUSY_BACKOFF_S = 0.05
PEER_RETRY_S = 0.5
PEER_RETRY_MAX_S = 4.0


class PeerFetchError(ModelStoreError):
    """The model could not be fetched from peers; the message says why."""


@dataclass
class _Pending:
    piece: Piece
    attempts: int = 0
    excluded: set[str] = field(default_factory=set)


class WeightFetcher:
    """Fetches manifests and pieces of models from the peers of one node's network."""

    def __init__(
        self,
        network: PeerNetwork,
        *,
        requests_per_peer: int = REQUESTS_PER_PEER,
        peer_wait_s: float = PEER_WAIT_S,
    ) -> None:
        self.network = network
        self.requests_per_peer = requests_per_peer
        self.peer_wait_s = peer_wait_s
        self.progress: dict[str, FetchProgress] = {}
        self.bad_pieces: Counter[str] = Counter()
        self.fetched_pieces: list[tuple[str, str]] = []  # (piece key, peer), for tests and benchmarks
        self.bytes_fetched = 0  # verified bytes received, every fetch together

    # ---- manifest -------------------------------------------------------------------------

    def peers_with(self, model_id: str) -> list[NodeId]:
        """Live peers whose record says they host ``model_id`` (an end model or any loaded layers)."""
        return sorted(
            record.node_id
            for record in self.network.records().values()
            if record.node_id != self.network.node_id
            and (
                model_id in record.end_models
                or any(s.model_id == model_id and s.loaded for s in record.segments)
            )
        )

    async def manifest(
        self, model_id: str, pinned_sha256: str | None = None
    ) -> tuple[Manifest, dict[NodeId, set[str] | None]]:
        """The trusted manifest and, for each peer serving it, the tensors it holds (None: all)."""
        self.progress.setdefault(model_id, FetchProgress(model_id))
        peers = await self._wait_for_peers(model_id)
        answers = await asyncio.gather(*(self._ask_manifest(peer, model_id) for peer in peers))
        by_digest: dict[str, list[tuple[NodeId, Manifest, set[str] | None]]] = {}
        for peer, answer in zip(peers, answers, strict=True):
            if answer is not None:
                by_digest.setdefault(answer[0].digest(), []).append((peer, *answer))
        if not by_digest:
            raise PeerFetchError(
                model_id, f"none of the peers hosting it ({', '.join(peers)}) served a manifest"
            )
        if pinned_sha256 is not None:
            chosen = by_digest.get(pinned_sha256)
            if chosen is None:
                raise PeerFetchError(model_id, f"no peer serves the pinned manifest {pinned_sha256[:16]}…")
        else:
            ranked = sorted(by_digest.values(), key=len, reverse=True)
            if len(ranked) > 1 and len(ranked[0]) == len(ranked[1]):
                raise PeerFetchError(
                    model_id, "peers serve different manifests in equal numbers; pin one with manifest_sha256"
                )
            chosen = ranked[0]
            for others in ranked[1:]:
                log.warning(
                    "peers %s serve another manifest of %s; ignored", [o[0] for o in others], model_id
                )
        manifest = chosen[0][1]
        log.info(
            "manifest of %s: sha256 %s from %s", model_id, manifest.digest(), ", ".join(c[0] for c in chosen)
        )
        return manifest, {peer: held for peer, _, held in chosen}

    async def _wait_for_peers(self, model_id: str) -> list[NodeId]:
        deadline = time.monotonic() + self.peer_wait_s
        while not (peers := self.peers_with(model_id)):
            if time.monotonic() > deadline:
                raise PeerFetchError(
                    model_id, f"no peer on the network hosts it (waited {self.peer_wait_s:g} s)"
                )
            await asyncio.sleep(0.2)
        return peers

    async def _ask_manifest(self, peer: NodeId, model_id: str) -> tuple[Manifest, set[str] | None] | None:
        try:
            header, payload = await self.network.request(
                peer, KIND_MANIFEST, {"model_id": model_id}, timeout=MANIFEST_TIMEOUT_S
            )
            if not isinstance(header, dict) or "refused" in header:
                log.warning("peer %s refused the manifest of %s: %s", peer, model_id, header)
                return None
            body = json.loads(payload)
            manifest = parse_manifest(json.dumps(body["manifest"]))
            held = body.get("held")
            if manifest.model_id != model_id:
                raise ManifestError(f"it describes {manifest.model_id!r}")
            return manifest, (set(held) if isinstance(held, list) else None)
        except (NetworkError, ManifestError, ValueError, KeyError, TypeError) as error:
            # One peer's failure or bad answer leaves the others to decide; it is logged.
            log.warning("no usable manifest of %s from %s: %s", model_id, peer, error)
            return None

    # ---- pieces ---------------------------------------------------------------------------

    async def fetch(
        self,
        folder: Path,
        manifest: Manifest,
        holders: dict[NodeId, set[str] | None],
        tensors: Iterable[str] | None,
    ) -> int:
        """Make ``folder`` hold every non-tensor piece and ``tensors`` (all when None).

        Returns the bytes fetched (pieces already verified on disk are not fetched again).
        """
        model_id = manifest.model_id
        await asyncio.to_thread(_prepare_files, folder, manifest)
        needed = pieces_for(manifest, tensors)
        journal = Journal(folder, manifest)
        progress = self.progress.setdefault(model_id, FetchProgress(model_id))
        progress.state, progress.started = "fetching", time.monotonic()
        progress.reused_bytes = await asyncio.to_thread(journal.recover, needed)
        pending = deque(_Pending(piece) for piece in needed if piece.key not in journal.verified)
        progress.total_bytes = sum(piece.size for piece in needed)
        progress.done_bytes = 0
        if journal.verified:
            log.info("%s: resuming, %d pieces already verified on disk", model_id, len(journal.verified))
        bar = tqdm.tqdm(
            total=progress.total_bytes, initial=progress.reused_bytes, unit="B", unit_scale=True,
            desc=f"fetching {model_id}", disable=None,
        )  # fmt: skip
        run = _Run(self, folder, manifest, holders, pending, journal, progress, bar)
        try:
            await run.all()
        except BaseException:
            progress.state = "interrupted"
            raise
        finally:
            bar.close()
        held = held_tensors(folder) or set()
        complete = {p.tensor for p in needed if p.tensor is not None} - {
            p.tensor for p in needed if p.tensor is not None and p.key not in journal.verified
        }
        write_held_tensors(folder, manifest, held | complete)
        progress.state = "done"
        if progress.by_peer:
            sources = ", ".join(
                f"{peer} ({count / MEGABYTE:.1f} MB)" for peer, count in progress.by_peer.items()
            )
            log.info(
                "fetched %.1f MB of %s (%.1f MB already here) from %s",
                progress.done_bytes / MEGABYTE, model_id, progress.reused_bytes / MEGABYTE, sources,
            )  # fmt: skip
        return progress.done_bytes


@dataclass
class _Run:
    """One fetch in flight: a worker pool per peer draining one queue of pending pieces."""

    fetcher: WeightFetcher
    folder: Path
    manifest: Manifest
    holders: dict[NodeId, set[str] | None]
    pending: deque[_Pending]
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

    def _next_for(self, peer: NodeId) -> _Pending | None:
        for index, item in enumerate(self.pending):
            held = self.holders[peer]
            if peer not in item.excluded and (
                item.piece.tensor is None or held is None or item.piece.tensor in held
            ):
                del self.pending[index]
                return item
        return None

    def _nobody_can(self, item: _Pending) -> bool:
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

    async def _fetch_one(self, peer: NodeId, item: _Pending) -> None:
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

    def _requeue(self, item: _Pending, exclude: str | None = None) -> None:
        if exclude is not None:
            item.excluded.add(exclude)
        if self._nobody_can(item):
            self._fail(item)
            return
        self.pending.append(item)

    def _fail(self, item: _Pending) -> None:
        tried = ", ".join(sorted(item.excluded)) or "none"
        reason = f"piece {item.piece.key} failed from every peer that holds it (tried: {tried})"
        self.failure = PeerFetchError(self.manifest.model_id, reason)
        self.finished.set()


def _prepare_files(folder: Path, manifest: Manifest) -> None:
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
