"""Fetching a model's pieces from peers: trusted manifest, several peers at once, verify, resume.

:meth:`WeightFetcher.manifest` asks every peer that hosts the model for its manifest
and trusts the one a pinned ``manifest_sha256`` names, else, of those that agree with
the hub's published hashes when the hub answers (:mod:`.hub_hashes`), the one most
peers serve (a tie between different manifests is refused: pin one). :meth:`WeightFetcher.fetch`
writes the pieces a node needs into a folder (safetensors files keep their full size,
unfetched tensors stay file holes), several requests per peer in flight, each piece
hashed before it is written and journaled. A piece that fails its hash is asked of
another peer, and the peer that sent it is reported (logged, counted in ``bad_pieces``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from pathlib import Path

import tqdm

from language_pipes.network.peer_network import PeerNetwork
from language_pipes.network.types import NetworkError, NodeId
from language_pipes.weights.hub_hashes import HubFiles, disagreements, hub_file_hashes
from language_pipes.weights.journal import Journal, held_tensors, write_held_tensors
from language_pipes.weights.manifest import Manifest, ManifestError, parse_manifest, pieces_for
from language_pipes.weights.progress import MEGABYTE, FetchProgress
from language_pipes.weights.serve import KIND_MANIFEST
from language_pipes.weights.transfer import PeerFetchError, Pending, PieceRun, prepare_files

log = logging.getLogger(__name__)

REQUESTS_PER_PEER = 4
# A peer builds a model's manifest on first request (hashing every byte): give it time.
MANIFEST_TIMEOUT_S = 300.0
PEER_WAIT_S = 30.0


class WeightFetcher:
    """Fetches manifests and pieces of models from the peers of one node's network."""

    def __init__(
        self,
        network: PeerNetwork,
        *,
        requests_per_peer: int = REQUESTS_PER_PEER,
        peer_wait_s: float = PEER_WAIT_S,
        hub_hashes: Callable[[str], HubFiles | None] = hub_file_hashes,
    ) -> None:
        self.network = network
        self.hub_hashes = hub_hashes  # the hub's published file hashes, checked before the network's word
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
            by_digest = await self._agreeing_with_hub(model_id, by_digest)
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

    async def _agreeing_with_hub(
        self, model_id: str, by_digest: dict[str, list[tuple[NodeId, Manifest, set[str] | None]]]
    ) -> dict[str, list[tuple[NodeId, Manifest, set[str] | None]]]:
        """The manifests that agree with the hub's published hashes; all of them if the hub cannot say."""
        hub = await asyncio.to_thread(self.hub_hashes, model_id)
        if hub is None:
            return by_digest
        agreeing = {}
        for digest, servers in by_digest.items():
            problems = disagreements(servers[0][1], hub)
            if problems:
                peers = ", ".join(peer for peer, _, _ in servers)
                log.warning(
                    "peers %s serve a manifest of %s the hub disagrees with: %s", peers, model_id, problems[0]
                )
            else:
                agreeing[digest] = servers
        if not agreeing:
            raise PeerFetchError(model_id, "no peer serves a manifest that agrees with the hub's hashes")
        log.info("manifest of %s checked against the hub's hashes", model_id)
        return agreeing

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
        await asyncio.to_thread(prepare_files, folder, manifest)
        needed = pieces_for(manifest, tensors)
        journal = Journal(folder, manifest)
        progress = self.progress.setdefault(model_id, FetchProgress(model_id))
        progress.state, progress.started = "fetching", time.monotonic()
        progress.reused_bytes = await asyncio.to_thread(journal.recover, needed)
        pending = deque(Pending(piece) for piece in needed if piece.key not in journal.verified)
        progress.total_bytes = sum(piece.size for piece in needed)
        progress.done_bytes = 0
        if journal.verified:
            log.info("%s: resuming, %d pieces already verified on disk", model_id, len(journal.verified))
        bar = tqdm.tqdm(
            total=progress.total_bytes, initial=progress.reused_bytes, unit="B", unit_scale=True,
            desc=f"fetching {model_id}", disable=None,
        )  # fmt: skip
        run = PieceRun(self, folder, manifest, holders, pending, journal, progress, bar)
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
