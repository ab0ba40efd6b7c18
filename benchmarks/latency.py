"""Decode speed and TTFT of a pipe whose hops cross real links with latency, against loopback, one run.

Each node runs in its own network namespace (language_pipes.testbed): its peer
and lane ports sit behind a delay proxy that holds each chunk RTT / 2 per
direction, so every pipe step pays one round trip per hop. Measured for 2
nodes (end model | every layer) and 3 nodes (end model | half | rest), at each
round trip of ``--rtts``:

- single stream: TTFT and decode tokens/s (streamed through the openai SDK);
- ``--streams`` concurrent streams: aggregate tokens/s;
- 2 nodes only: the aggregate again from a second origin that keeps one
  micro-batch in flight (``remote_lanes = 1``) instead of two, across the
  same link: what the two lanes buy on real hosts.

Reference, same run: the same pipe on 127.0.0.1 in this namespace (no proxy,
one lane: every node shares this machine). Ratios are against it; "1/(step+RTT)"
is the naive bound loopback step time + one round trip per hop would give.
``--speculation`` adds ``speculation = true`` and ``speculation_max_tokens``
to the origins behind the links (the loopback reference stays plain).

    sudo python benchmarks/latency.py [--rtts 0,5,20,50] [--nodes 2,3] [--tokens 64] [--streams 16]

Needs root (``ip netns``). Prints a table, writes benchmarks/results/latency.json
(and latency.png when matplotlib is installed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anchors.load import LoadClient, LoadPlan, concurrent_streams, single_stream  # noqa: E402
from cluster import (  # noqa: E402
    DEFAULT_MODEL,
    LocalCluster,
    RunningNode,
    end_only,
    free_port,
    half_model_memory,
    layers_only,
)
from language_pipes.config import NodeConfig  # noqa: E402
from language_pipes.models.store import ModelStore  # noqa: E402
from language_pipes.testbed.netns import Host, Testbed, unavailable_reason  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "latency.json"


def layer_bodies(nodes: int, folder: Path) -> list[str]:
    """The layer nodes' config bodies: every layer on one node, or about half and the rest."""
    if nodes == 2:
        return [layers_only(4)]
    return [layers_only(half_model_memory(folder)), layers_only(4)]


# Step deadlines far above the defaults (5 s + 0.1 s per token): on a loaded machine a step can
# wait behind the other lane's step on the layer node, and a benchmark measures speed, not failover.
PATIENT_STEPS = ["step_timeout_s = 120.0", "step_timeout_per_token_s = 1.0"]


def origin_body(extra: list[str]) -> str:
    return "\n".join([*PATIENT_STEPS, *extra, end_only()])


@contextmanager
def pipe(
    folder: Path,
    workdir: Path,
    nodes: int,
    threads: int,
    testbed: Testbed | None,
    origin_extra: list[str],
    one_lane_origin: bool,
) -> Iterator[dict[str, RunningNode]]:
    """Start a pipe (in ``testbed``'s hosts, or on loopback) and yield its origins by name."""
    cluster = LocalCluster(workdir, threads)
    hosts: list[Host | None] = list(testbed.hosts) if testbed is not None else [None] * (nodes + 1)
    try:
        origin = cluster.start("end", origin_body(origin_extra), job_port=free_port(), host=hosts[0])
        origins = {"two lanes" if testbed is not None else "loopback": origin}
        for index, body in enumerate(layer_bodies(nodes, folder), start=1):
            layer_node = cluster.start(f"layers-{index}", body, bootstrap=origin, host=hosts[index])
            # The next layer node looks for what is missing once this one has claimed its layers.
            wait_for_log(workdir / f"{layer_node.name}.log", "loading layers")
        if one_lane_origin:
            extra = [*origin_extra, "remote_lanes = 1"]
            origins["one lane"] = cluster.start(
                "end-one-lane", origin_body(extra), job_port=free_port(), bootstrap=origin, host=hosts[nodes]
            )
        for node in origins.values():
            cluster.wait_serving(node)
        yield origins
    finally:
        cluster.stop()


def wait_for_log(path: Path, text: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{path.name} did not log {text!r} within {timeout_s:.0f} s")


async def measure(node: RunningNode, tokenizer: Any, plan: LoadPlan, streams: int) -> dict[str, Any]:
    client = LoadClient(
        f"http://{node.address}:{node.job_port}/v1",
        DEFAULT_MODEL,
        lambda text: len(tokenizer.encode(text, add_special_tokens=False)),
        long_prompt_body="",
    )
    try:
        await client.stream("Say hello.", 8)  # warm up: connections, lanes, kernels
        single = await single_stream(client, plan)
        tpot = single["tpot_ms"]
        single["decode_tok_s"] = 1000 / tpot if tpot else None
        many = await concurrent_streams(client, plan, streams)
        return {"single": single, "concurrent": many}
    finally:
        await client.close()


async def aggregate_only(node: RunningNode, tokenizer: Any, plan: LoadPlan, streams: int) -> dict[str, Any]:
    client = LoadClient(
        f"http://{node.address}:{node.job_port}/v1",
        DEFAULT_MODEL,
        lambda text: len(tokenizer.encode(text, add_special_tokens=False)),
        long_prompt_body="",
    )
    try:
        await client.stream("Say hello.", 8)
        return await concurrent_streams(client, plan, streams)
    finally:
        await client.close()


def speculation_lines(arguments: argparse.Namespace) -> list[str]:
    if not arguments.speculation:
        return []
    missing = {"speculation", "speculation_max_tokens"} - set(NodeConfig.model_fields)
    if missing:
        raise SystemExit(f"--speculation: this checkout has no config keys {sorted(missing)} yet")
    return ["speculation = true", f"speculation_max_tokens = {arguments.speculation_max_tokens}"]


def run(arguments: argparse.Namespace) -> dict[str, Any]:
    folder = ModelStore().ensure(DEFAULT_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    plan = LoadPlan(
        tokens=arguments.tokens,
        concurrency=(arguments.streams,),
        single_runs=2,
        background_tokens=0,
        phase_timeout_s=900,
    )
    lanes_configurable = "remote_lanes" in NodeConfig.model_fields
    extra = speculation_lines(arguments)
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "load_average_start": os.getloadavg()[0],
        "model": DEFAULT_MODEL,
        "threads_per_node": arguments.threads,
        "tokens": arguments.tokens,
        "streams": arguments.streams,
        "speculation": bool(extra),
        "output": str(arguments.output),
        "pipes": {},
    }
    with tempfile.TemporaryDirectory(prefix="lp-latency-") as scratch:
        for nodes in arguments.nodes:
            entry: dict[str, Any] = {"rtt": {}}
            print(f"{nodes} nodes on loopback ...", flush=True)
            with pipe(folder, Path(scratch) / f"loop{nodes}", nodes, arguments.threads, None, [], False) as o:
                entry["loopback"] = asyncio.run(measure(o["loopback"], tokenizer, plan, arguments.streams))
            results["pipes"][str(nodes)] = entry
            one_lane = nodes == 2 and lanes_configurable
            with Testbed(nodes + int(one_lane)) as testbed:
                for host in testbed.hosts:
                    testbed.start_delay_proxy(host, arguments.rtts[0] / 1000)
                workdir = Path(scratch) / f"netns{nodes}"
                with pipe(folder, workdir, nodes, arguments.threads, testbed, extra, one_lane) as origins:
                    for rtt_ms in arguments.rtts:
                        print(f"{nodes} nodes, {rtt_ms:g} ms round trip per hop ...", flush=True)
                        testbed.set_round_trip(rtt_ms / 1000)
                        point = asyncio.run(measure(origins["two lanes"], tokenizer, plan, arguments.streams))
                        if "one lane" in origins:
                            point["one_lane_concurrent"] = asyncio.run(
                                aggregate_only(origins["one lane"], tokenizer, plan, arguments.streams)
                            )
                        entry["rtt"][f"{rtt_ms:g}"] = point
                        save(results)  # what is measured so far survives an interrupted run
            results["pipes"][str(nodes)] = entry
    results["load_average_end"] = os.getloadavg()[0]
    return results


def save(results: dict[str, Any]) -> None:
    path = Path(results["output"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


def _ratio(value: float | None, reference: float | None) -> str:
    return f"{value / reference:.2f}x" if value and reference else "-"


def _number(value: float | None, digits: int = 1) -> str:
    return f"{value:.{digits}f}" if value is not None else "-"


def _aggregate(measured: dict[str, Any] | None, streams: int) -> str:
    """Aggregate tok/s of a concurrent run, with how many streams failed, if any."""
    if not measured:
        return "-"
    failed = streams - measured["completed"]
    return _number(measured["aggregate_tok_s"]) + (f" ({failed} failed)" if failed else "")


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def table(results: dict[str, Any]) -> str:
    header = [
        "nodes",
        "RTT per hop (ms)",
        "TTFT (s)",
        "decode tok/s",
        "vs loopback",
        "1/(step+RTT) tok/s",
        f"{results['streams']} streams tok/s",
        "vs loopback",
        "one lane tok/s",
        "two lanes / one",
    ]
    lines = [_row(header), _row(["---"] * len(header))]
    streams = results["streams"]
    for nodes, entry in results["pipes"].items():
        loop_single, loop_many = entry["loopback"]["single"], entry["loopback"]["concurrent"]
        hops = int(nodes) - 1
        loop_rate, loop_aggregate = loop_single["decode_tok_s"], loop_many["aggregate_tok_s"]
        ttft = _number(loop_single["ttft_s"], 3)
        lines.append(
            _row([nodes, "loopback", ttft, _number(loop_rate), "1.00x", "-", _aggregate(loop_many, streams)])
            + " 1.00x | - | - |"
        )
        for rtt, point in entry["rtt"].items():
            single, many = point["single"], point["concurrent"]
            step_ms = loop_single["tpot_ms"]
            bound = 1000 / (step_ms + hops * float(rtt)) if step_ms else None
            one_lane = point.get("one_lane_concurrent", {}).get("aggregate_tok_s")
            cells = [nodes, rtt, _number(single["ttft_s"], 3), _number(single["decode_tok_s"])]
            cells += [_ratio(single["decode_tok_s"], loop_rate), _number(bound)]
            cells += [_aggregate(many, streams), _ratio(many["aggregate_tok_s"], loop_aggregate)]
            cells += [_aggregate(point.get("one_lane_concurrent"), streams)]
            cells += [_ratio(many["aggregate_tok_s"], one_lane)]
            lines.append(_row(cells))
    return "\n".join(lines)


def plot(results: dict[str, Any]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False  # matplotlib is optional (the bench extra): the table and JSON are the results
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for nodes, entry in results["pipes"].items():
        rtts = [float(rtt) for rtt in entry["rtt"]]
        left.plot(
            rtts, [p["single"]["decode_tok_s"] for p in entry["rtt"].values()], "o-", label=f"{nodes} nodes"
        )
        right.plot(
            rtts,
            [p["concurrent"]["aggregate_tok_s"] for p in entry["rtt"].values()],
            "o-",
            label=f"{nodes} nodes",
        )
    left.set(xlabel="round trip per hop (ms)", ylabel="decode tok/s", title="single stream")
    right.set(xlabel="round trip per hop (ms)", ylabel="tok/s", title=f"{results['streams']} streams")
    for axes in (left, right):
        axes.legend()
    figure.tight_layout()
    figure.savefig(Path(results["output"]).with_suffix(".png"))
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtts", default="0,5,20,50", help="round trips per hop, ms, comma-separated")
    parser.add_argument("--nodes", default="2,3", help="pipe lengths, comma-separated (2 and/or 3)")
    parser.add_argument("--tokens", type=int, default=64, help="completion tokens per stream")
    parser.add_argument("--streams", type=int, default=16, help="concurrent streams of the aggregate")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per node")
    parser.add_argument("--speculation", action="store_true", help="origins behind links speculate")
    parser.add_argument("--speculation-max-tokens", type=int, default=4)
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON file to write (plot beside it)")
    arguments = parser.parse_args()
    arguments.rtts = [float(value) for value in arguments.rtts.split(",")]
    arguments.nodes = [int(value) for value in arguments.nodes.split(",")]
    if set(arguments.nodes) - {2, 3}:
        parser.error("--nodes takes 2 and/or 3")
    reason = unavailable_reason()
    if reason is not None:
        raise SystemExit(f"cannot build hosts with latency here: {reason}")
    results = run(arguments)
    save(results)
    print()
    load = f"load average {results['load_average_start']:.1f} -> {results['load_average_end']:.1f}"
    print(
        f"{results['date']} · {results['machine']} · CPU {results['cpu_capability']} · "
        f"{results['threads_per_node']} thread(s) per node · {load} · {results['tokens']} tokens · "
        f"speculation {results['speculation']}"
    )
    print(table(results))
    plotted = plot(results)
    print(f"\nwrote {arguments.output}" + (" and its .png plot" if plotted else " (no matplotlib: no plot)"))


if __name__ == "__main__":
    main()
