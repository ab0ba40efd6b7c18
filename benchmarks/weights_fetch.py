"""Weights from peers: bytes a half-model layer node fetches, transfer rates, the server's decode cost.

Measures, on the default model, with real node processes serving and a fetcher in this process:
- bytes a layer node hosting half the decoder layers fetches, against the whole checkpoint plus
  small files (target: at most 55%);
- the rate of fetching every tensor over loopback from one source peer and from two;
- a serving node's decode rate (tok/s, one stream through its API) while a peer keeps fetching from
  it at its configured rate, against the same node idle (target: at least 0.9x), and the CPU the
  serving node's process uses meanwhile (cores, from /proc: serving seals and reads pieces on
  low-priority bulk threads, language_pipes.network.bulk). For the decode figures the serving node
  is pinned to CPU 0 and this process (the fetcher, as if on another host) to CPU 1.

Prints a table and writes benchmarks/results/weights_fetch.json.
Usage: python benchmarks/weights_fetch.py [--tokens 64] [--serve-rate 50000000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from openai import AsyncOpenAI

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generation import one_stream  # noqa: E402
from cluster import DEFAULT_MODEL, LocalCluster, free_port, whole_model  # noqa: E402
from language_pipes.cli import new_network_key  # noqa: E402
from language_pipes.models.partial import ModelSource  # noqa: E402
from language_pipes.models.store import ModelStore  # noqa: E402
from language_pipes.network.identity import NodeIdentity  # noqa: E402
from language_pipes.network.peer_network import PeerNetwork  # noqa: E402
from language_pipes.network.types import NodeId  # noqa: E402
from language_pipes.weights.fetch import WeightFetcher  # noqa: E402
from language_pipes.weights.manifest import tensor_names  # noqa: E402
from language_pipes.weights.provider import ModelWeights, layer_modules, tensors_for_modules  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "weights_fetch.json"
MEGABYTE = 1_000_000


async def joined(ports: list[int], key: bytes) -> tuple[PeerNetwork, WeightFetcher]:
    network = PeerNetwork(
        NodeIdentity.generate("bench-fetcher"),
        listen_host="127.0.0.1",
        bootstrap=[("127.0.0.1", port) for port in ports],
        network_key=key,
    )
    await network.start()
    fetcher = WeightFetcher(network)
    deadline = time.monotonic() + 60
    while len(fetcher.peers_with(DEFAULT_MODEL)) < len(ports):
        if time.monotonic() > deadline:
            raise TimeoutError("the serving nodes did not appear")
        await asyncio.sleep(0.2)
    return network, fetcher


async def half_model_bytes(fetcher: WeightFetcher, root: Path) -> dict[str, float]:
    """Fetch what a layer node with half the decoder layers needs, as the node does it."""
    weights = ModelWeights(ModelStore(root), fetcher)
    assert fetcher.bytes_fetched == 0
    planning = ModelSource.open(await weights.planning_folder(DEFAULT_MODEL, "peers"))
    half = planning.num_layers // 2
    manifest, _ = await fetcher.manifest(DEFAULT_MODEL)
    wanted = tensors_for_modules(planning.reader, layer_modules(1, 1 + half))
    await weights.ensure_tensors(DEFAULT_MODEL, planning.folder, wanted)
    fetched = fetcher.bytes_fetched  # both fetches: small files and headers, then the tensors
    return {
        "layers_hosted": half,
        "num_layers": planning.num_layers,
        "bytes_fetched": fetched,
        "model_bytes": manifest.total_bytes(),
        "fraction": fetched / manifest.total_bytes(),
    }


async def full_fetch_rate(fetcher: WeightFetcher, peers: list[str], folder: Path) -> dict[str, float]:
    manifest, holders = await fetcher.manifest(DEFAULT_MODEL)
    chosen = {NodeId(peer): holders[NodeId(peer)] for peer in peers}
    fetcher.progress.pop(DEFAULT_MODEL, None)
    started = time.perf_counter()
    fetched = await fetcher.fetch(folder, manifest, chosen, tensor_names(manifest))
    seconds = time.perf_counter() - started
    return {"bytes": fetched, "seconds": seconds, "mb_per_s": fetched / seconds / MEGABYTE}


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0  # no /proc here: the CPU columns read 0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def decode_rate(port: int, tokens: int, runs: int = 3) -> float:
    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="bench", timeout=600)
    rates = []
    for _ in range(runs):
        _, seconds, count = await one_stream(client, tokens)
        rates.append((count - 1) / seconds)
    return statistics.median(rates)


async def while_serving(fetcher: WeightFetcher, port: int, tokens: int, root: Path) -> tuple[float, float]:
    """Decode rate of the serving node while the fetcher pulls the whole model from it, again and again."""
    manifest, holders = await fetcher.manifest(DEFAULT_MODEL)
    only = {NodeId("serve-a"): holders[NodeId("serve-a")]}
    served = 0
    stop = asyncio.Event()

    async def keep_fetching() -> None:
        nonlocal served
        round_index = 0
        while not stop.is_set():
            round_index += 1
            served += await fetcher.fetch(
                root / f"round-{round_index}", manifest, only, tensor_names(manifest)
            )

    load = asyncio.create_task(keep_fetching())
    await asyncio.sleep(1.0)  # the transfer is flowing
    started = time.perf_counter()
    rate = await decode_rate(port, tokens)
    elapsed = time.perf_counter() - started
    stop.set()
    load.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await load
    return rate, served / max(elapsed, 1e-9) / MEGABYTE


def pin_apart(serving_pid: int) -> bool:
    """Give the serving node CPU 0 and this process (fetcher and API client) CPU 1, as two hosts would.

    Without this the fetcher's unsealing and hashing, which on a real network run on another
    machine, compete with the serving node's decode for this machine's cores. Every thread of the
    node is pinned; threads it starts later inherit it. Returns False where it cannot be done.
    """
    if not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2:
        return False
    for task in Path(f"/proc/{serving_pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), {0})
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        os.sched_setaffinity(int(task.name), {1})
    return True


async def measure(tokens: int, serve_rate: int, key: str) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="lp-weights-bench-") as scratch:
        root = Path(scratch)
        cluster = LocalCluster(root / "nodes", torch_threads=1)
        settings = f'network_key = "{key}"\nweights_serve_bytes_per_s = {serve_rate}\n'
        try:
            a = cluster.start("serve-a", settings + whole_model(), job_port=free_port())
            b = cluster.start(
                "serve-b", settings + whole_model(), job_port=free_port(), bootstrap=a.peer_port
            )
            cluster.wait_serving(a)
            cluster.wait_serving(b)
            network, fetcher = await joined([a.peer_port, b.peer_port], bytes.fromhex(key))
            try:
                half = await half_model_bytes(fetcher, root / "half-store")
                one = await full_fetch_rate(fetcher, ["serve-a"], root / "one-peer")
                two = await full_fetch_rate(fetcher, ["serve-a", "serve-b"], root / "two-peers")
                assert a.job_port is not None
                pinned = pin_apart(a.process.pid)
                cpu, started = cpu_seconds(a.process.pid), time.perf_counter()
                idle = await decode_rate(a.job_port, tokens)
                idle_cores = (cpu_seconds(a.process.pid) - cpu) / (time.perf_counter() - started)
                cpu, started = cpu_seconds(a.process.pid), time.perf_counter()
                busy, served_rate = await while_serving(fetcher, a.job_port, tokens, root / "serving")
                busy_cores = (cpu_seconds(a.process.pid) - cpu) / (time.perf_counter() - started)
            finally:
                await network.stop()
        finally:
            cluster.stop()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "serve_bytes_per_s": serve_rate,
        "serving_node_pinned_to_its_own_core": pinned,
        "half_model": half,
        "one_peer": one,
        "two_peers": two,
        "decode_tok_s_idle": idle,
        "decode_tok_s_serving": busy,
        "decode_ratio": busy / idle,
        "served_mb_per_s_during_decode": served_rate,
        "serving_node_cores_idle": idle_cores,
        "serving_node_cores_serving": busy_cores,
    }


def table(results: dict[str, object]) -> str:
    half, one, two = results["half_model"], results["one_peer"], results["two_peers"]
    assert isinstance(half, dict) and isinstance(one, dict) and isinstance(two, dict)
    limit = int(results["serve_bytes_per_s"]) / MEGABYTE  # type: ignore[call-overload]
    rows = [
        "| measure | value | target |",
        "|---|---|---|",
        f"| bytes fetched, {half['layers_hosted']} of {half['num_layers']} layers | "
        f"{half['bytes_fetched'] / MEGABYTE:.1f} MB of {half['model_bytes'] / MEGABYTE:.1f} MB "
        f"({half['fraction']:.1%}) | ≤ 55% |",
        f"| whole model from 1 peer (cap {limit:.0f} MB/s each) | {one['mb_per_s']:.1f} MB/s | |",
        f"| whole model from 2 peers | {two['mb_per_s']:.1f} MB/s "
        f"({two['mb_per_s'] / one['mb_per_s']:.2f}× of 1) | |",
        f"| serving node decode, idle | {results['decode_tok_s_idle']:.1f} tok/s | |",
        f"| serving node decode, serving {results['served_mb_per_s_during_decode']:.1f} MB/s | "
        f"{results['decode_tok_s_serving']:.1f} tok/s ({results['decode_ratio']:.2f}× idle) | ≥ 0.9× |",
        f"| serving node's CPU, idle / serving | {results['serving_node_cores_idle']:.2f} / "
        f"{results['serving_node_cores_serving']:.2f} cores | |",
        f"\nCPU capability: {results['cpu_capability']}; serving node on its own core: "
        f"{results['serving_node_pinned_to_its_own_core']}",
    ]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument(
        "--serve-rate", type=int, default=50_000_000, help="weights_serve_bytes_per_s of both"
    )
    args = parser.parse_args()
    results = asyncio.run(measure(args.tokens, args.serve_rate, new_network_key()))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(table(results))
    print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
