"""A fetching node process killed (SIGKILL) half way through a transfer resumes, then serves the model.

Run as a script, this file is the fetching node: ``python test_weights_kill.py NODE_ID STORE
KEY_HEX BOOTSTRAP_PORT`` fetches the tiny model from its peers the way a node does
(:class:`~language_pipes.weights.provider.ModelWeights`: a planning folder, then every tensor),
prints one JSON line naming each piece it fetched, then serves the installed model until killed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from language_pipes.models.store import PEERS_PREFIX, ModelStore
from language_pipes.network.identity import NodeIdentity
from language_pipes.network.peer_network import PeerNetwork
from language_pipes.network.types import NodeId
from language_pipes.weights.fetch import WeightFetcher
from language_pipes.weights.journal import JOURNAL_FILE, stored_manifest
from language_pipes.weights.manifest import build_manifest, pieces_for, tensor_names
from language_pipes.weights.provider import ModelWeights
from language_pipes.weights.serve import WeightServer
from support.peers import Starter, wait_until
from support.weight_peers import TEST_BLOCK_BYTES, TINY_MODEL, closed_port_url, serving_peer, tiny_store

TESTS_DIR = Path(__file__).resolve().parents[1]  # so the child, run as a script, imports support too
# The serving peer's rate: the whole tiny model takes about this many seconds, so the kill lands mid-way.
TRANSFER_S = 3

pytestmark = pytest.mark.slow


async def _run_child(node_id: str, root: Path, key: bytes, bootstrap_port: int) -> None:
    network = PeerNetwork(
        NodeIdentity.generate(node_id),
        listen_host="127.0.0.1",
        advertise_ip="127.0.0.1",
        bootstrap=[("127.0.0.1", bootstrap_port)],
        network_key=key,
    )
    await network.start()
    store = ModelStore(root)
    fetcher = WeightFetcher(network, peer_wait_s=20.0)
    weights = ModelWeights(store, fetcher)
    planning = await weights.planning_folder(TINY_MODEL, "peers")
    manifest = stored_manifest(planning)
    assert manifest is not None
    await weights.ensure_tensors(TINY_MODEL, planning, set(tensor_names(manifest)))
    WeightServer(network, store, lambda: {TINY_MODEL}, block_bytes=TEST_BLOCK_BYTES)
    network.set_local_record(end_models=[TINY_MODEL])
    print(json.dumps({"fetched": [key for key, _ in fetcher.fetched_pieces]}), flush=True)
    await asyncio.Event().wait()


class FetchingProcess:
    """The child fetching node; whatever is left running is killed at the end."""

    def __init__(self) -> None:
        self.processes: list[asyncio.subprocess.Process] = []

    async def start(self, node_id: str, root: Path, key: bytes, port: int) -> asyncio.subprocess.Process:
        search_path = os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")]))
        environment = {**os.environ, "LP_APP_DIR": str(root / "app"), "PYTHONPATH": search_path}
        process = await asyncio.create_subprocess_exec(
            sys.executable, __file__, node_id, str(root), key.hex(), str(port),
            env=environment, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self.processes.append(process)
        return process

    async def close(self) -> None:
        for process in self.processes:
            if process.returncode is None:
                process.kill()
                await process.wait()


@pytest.fixture(autouse=True)
def unreachable_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """The child asks no real hub: HF_ENDPOINT points where nothing listens."""
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest_asyncio.fixture
async def children() -> AsyncIterator[FetchingProcess]:
    processes = FetchingProcess()
    yield processes
    await processes.close()


def _journaled(folder: Path) -> set[str]:
    """Piece keys the journal lists (a line cut short by the kill names no piece)."""
    try:
        lines = (folder / JOURNAL_FILE).read_text().splitlines()
    except FileNotFoundError:
        return set()
    return {line.split(" ", 1)[1] for line in lines if " " in line}


@pytest.mark.asyncio
async def test_a_killed_fetching_process_resumes_without_refetching_and_then_serves(
    start_node: Starter, children: FetchingProcess, tmp_path: Path
) -> None:
    key = os.urandom(16)
    reference = tiny_store(tmp_path / "reference")
    manifest = build_manifest(reference.local_path(TINY_MODEL), TINY_MODEL, TEST_BLOCK_BYTES)
    rate = manifest.total_bytes() // TRANSFER_S
    a = await serving_peer(start_node, "a", reference, key, bytes_per_s=rate)
    root = tmp_path / "fetching"
    staging = root / f"{PEERS_PREFIX}{ModelStore(root).local_path(TINY_MODEL).name}"
    every_piece = {piece.key for piece in pieces_for(manifest, tensor_names(manifest))}

    first = await children.start("fetcher-1", root, key, a.network.peer_port)
    # Killed once a third of the pieces are verified: half way, whatever the machine's speed.
    await wait_until(lambda: len(_journaled(staging)) >= len(every_piece) // 3, 60, "a third fetched")
    first.send_signal(signal.SIGKILL)
    await first.wait()
    verified = _journaled(staging) & every_piece
    assert verified and verified != every_piece  # the kill landed mid-transfer
    assert not ModelStore(root).is_installed(TINY_MODEL)

    second = await children.start("fetcher-2", root, key, a.network.peer_port)
    assert second.stdout is not None
    line = await asyncio.wait_for(second.stdout.readline(), 120)
    fetched = set(json.loads(line)["fetched"])
    assert fetched == every_piece - verified  # the rest, and nothing already verified
    installed = ModelStore(root).local_path(TINY_MODEL)
    for entry in manifest.files:  # the installed folder is byte for byte the model
        assert (installed / entry.name).read_bytes() == (
            reference.local_path(TINY_MODEL) / entry.name
        ).read_bytes()

    # And it serves what it fetched: a third node takes the whole model from it alone.
    fetcher = WeightFetcher(await start_node("d", network_key=key, bootstrap=(a.network,)))
    await wait_until(lambda: NodeId("fetcher-2") in fetcher.peers_with(TINY_MODEL), 20, "fetcher-2 serving")
    served, holders = await fetcher.manifest(TINY_MODEL)
    assert served.digest() == manifest.digest()
    await fetcher.fetch(tmp_path / "d", served, {NodeId("fetcher-2"): holders[NodeId("fetcher-2")]}, None)
    assert dict(fetcher.progress[TINY_MODEL].by_peer).keys() == {"fetcher-2"}
    assert (tmp_path / "d" / "model.safetensors").read_bytes() == (
        installed / "model.safetensors"
    ).read_bytes()


if __name__ == "__main__":
    asyncio.run(_run_child(sys.argv[1], Path(sys.argv[2]), bytes.fromhex(sys.argv[3]), int(sys.argv[4])))
