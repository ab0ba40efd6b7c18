"""Round-trip latency of the peer network and of a step lane on loopback, next to raw ZeroMQ.

An echo node runs in a child process; this process sends requests of 1 KB and
about 1 MB and times each reply. "per hop" is half the round trip (one sealed
message each way). The raw ZeroMQ rows (DEALER to ROUTER, no handshake, no
encryption) show what the network layer adds on top of the engine; the step
lane rows are what a pipe step pays (sent from a thread, answered on the echo
node's lane thread, no event loop on either side).

    python benchmarks/network_latency.py [--iterations N]

Prints a table and writes benchmarks/results/network_latency.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from language_pipes.network.identity import NodeIdentity
from language_pipes.network.peer_network import PeerNetwork
from language_pipes.network.types import NodeId

PAYLOAD_SIZES = {"1 KB": 1024, "1 MB": 1 << 20}
RESULTS_FILE = Path(__file__).parent / "results" / "network_latency.json"


async def serve_echo(mode: str, network_key_hex: str) -> None:
    """Child process: an echo node (peer network) or an echo ROUTER (raw ZeroMQ)."""
    if mode == "raw":
        context = zmq.asyncio.Context()
        router = context.socket(zmq.ROUTER)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        print(f"READY {port}", flush=True)
        while True:
            frames = await router.recv_multipart(copy=False)
            await router.send_multipart(frames, copy=False)
    network = PeerNetwork(
        NodeIdentity.generate("echo"),
        listen_host="127.0.0.1",
        network_key=bytes.fromhex(network_key_hex) if network_key_hex else None,
    )

    async def echo(sender: NodeId, header: Any, payload: bytes) -> tuple[bytes, bytes]:
        return b"", payload

    network.register_handler("echo", echo)
    network.register_lane_handler("echo", lambda sender, header, payload: payload)
    await network.start()
    print(f"READY {network.peer_port}", flush=True)
    await asyncio.Event().wait()


def start_child(mode: str, network_key_hex: str) -> tuple[subprocess.Popen[bytes], int]:
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", mode, "--key", network_key_hex], stdout=subprocess.PIPE
    )
    assert child.stdout is not None
    line = child.stdout.readline().decode()
    if not line.startswith("READY"):
        child.kill()
        raise RuntimeError(f"echo child failed to start: {line!r}")
    return child, int(line.split()[1])


def summarize(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "round_trip_median_us": statistics.median(ordered) * 1e6,
        "round_trip_p90_us": ordered[int(0.9 * (len(ordered) - 1))] * 1e6,
        "per_hop_median_us": statistics.median(ordered) * 1e6 / 2,
    }


async def time_peer_network(
    port: int, network_key: bytes | None, size: int, iterations: int, lane: bool = False
) -> list[float]:
    """Round trips through the event loop (``request``) or, with ``lane``, from a thread over a step lane."""
    client = PeerNetwork(
        NodeIdentity.generate(f"client-{size}"),
        listen_host="127.0.0.1",
        network_key=network_key,
        bootstrap=[("127.0.0.1", port)],
    )
    await client.start()
    try:
        deadline = time.monotonic() + 10.0
        while "echo" not in client.records():
            if time.monotonic() > deadline:
                raise RuntimeError("the echo node did not join within 10 s")
            await asyncio.sleep(0.01)
        payload = os.urandom(size)
        if lane:
            return await asyncio.to_thread(time_lane, client, payload, iterations)
        samples = []
        for index in range(iterations + 10):
            started = time.perf_counter()
            _, reply = await client.request(NodeId("echo"), "echo", b"", payload)
            if index >= 10:  # the first few warm caches and connections up
                samples.append(time.perf_counter() - started)
            assert len(reply) == size
        return samples
    finally:
        await client.stop()


def time_lane(client: PeerNetwork, payload: bytes, iterations: int) -> list[float]:
    """From one thread, as a scheduler thread sends its steps."""
    samples = []
    for index in range(iterations + 10):
        started = time.perf_counter()
        reply = client.lane_request(NodeId("echo"), "echo", b"", payload, 10.0)
        if index >= 10:
            samples.append(time.perf_counter() - started)
        assert reply is not None and len(reply) == len(payload)
    return samples


async def time_raw_zeromq(port: int, size: int, iterations: int) -> list[float]:
    context = zmq.asyncio.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    payload = os.urandom(size)
    samples = []
    try:
        for index in range(iterations + 10):
            started = time.perf_counter()
            await dealer.send_multipart([b"header", payload], copy=False)
            reply = await dealer.recv_multipart()
            if index >= 10:
                samples.append(time.perf_counter() - started)
            assert len(reply[1]) == size
        return samples
    finally:
        dealer.close(linger=0)
        context.term()


async def run(iterations: int) -> list[dict[str, Any]]:
    network_key = os.urandom(16)
    rows: list[dict[str, Any]] = []
    for transport, mode, key in (
        ("raw ZeroMQ (no crypto)", "raw", None),
        ("peer network, no network_key", "peer", None),
        ("peer network, network_key", "peer", network_key),
        ("step lane, network_key", "lane", network_key),
    ):
        child, port = start_child("raw" if mode == "raw" else "peer", key.hex() if key else "")
        try:
            for label, size in PAYLOAD_SIZES.items():
                count = iterations if size <= 65536 else max(20, iterations // 10)
                if mode == "raw":
                    samples = await time_raw_zeromq(port, size, count)
                else:
                    samples = await time_peer_network(port, key, size, count, lane=mode == "lane")
                rows.append({"transport": transport, "payload": label, "bytes": size, **summarize(samples)})
        finally:
            child.kill()
            child.wait()
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'transport':32} {'payload':>8} {'RTT median µs':>14} {'RTT p90 µs':>11} {'per hop µs':>11}")
    for row in rows:
        print(
            f"{row['transport']:32} {row['payload']:>8} {row['round_trip_median_us']:14.0f} "
            f"{row['round_trip_p90_us']:11.0f} {row['per_hop_median_us']:11.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--serve", choices=["raw", "peer"], help=argparse.SUPPRESS)
    parser.add_argument("--key", default="", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.serve:
        asyncio.run(serve_echo(arguments.serve, arguments.key))
        return
    rows = asyncio.run(run(arguments.iterations))
    print_table(rows)
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(
        json.dumps(
            {
                "benchmark": "network_latency",
                "machine": {
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "zmq": zmq.zmq_version(),
                },
                "iterations": arguments.iterations,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS_FILE}")


if __name__ == "__main__":
    main()
