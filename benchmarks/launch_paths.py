"""Decode speed of a node started the way the TUI starts it against one started by ``run``, same run.

Both paths call :func:`language_pipes.process_settings.prepare_native_threads`
before torch loads (the CLI in ``command_run``, the TUI in
``NodeControl.start_network``). This starts the default model's single node
twice, alternating: once with ``language-pipes -c FILE run`` and once through
the TUI's own :class:`~language_pipes.tui.node_control.NodeControl` (network
server, then job server, exactly as the Home tab's buttons do, without drawing
a screen), and measures one greedy stream's decode tok/s on each through the
OpenAI API. Each node also reports the OpenMP settings and torch thread count
it runs with. The ratio TUI / CLI should be 1.

Prints a table and writes benchmarks/results/launch_paths.json.
Usage: python benchmarks/launch_paths.py [--tokens 96] [--threads 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from openai import AsyncOpenAI

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generation import one_stream  # noqa: E402
from cluster import LocalCluster, free_port, whole_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "launch_paths.json"
REPORTED = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def serve_like_the_tui(config_path: str) -> None:
    """The node process of the TUI path: NodeControl starts the network and job servers."""
    from language_pipes.config import load_config
    from language_pipes.tui.node_control import NodeControl

    async def serve() -> None:
        config = load_config(config_path)
        control = NodeControl()
        stopping = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
        await control.start_network(config)
        await control.start_job_server(config)
        _report_settings(Path(config_path))
        await stopping.wait()
        await control.shutdown()

    asyncio.run(serve())


def _report_settings(config_path: Path) -> None:
    settings = {name: os.environ.get(name) for name in REPORTED}
    settings["torch_threads"] = str(torch.get_num_threads())
    config_path.with_suffix(".settings.json").write_text(json.dumps(settings))


async def decode_tok_s(port: int, tokens: int) -> float:
    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="bench", timeout=600)
    await one_stream(client, 16)  # warm up
    runs = [await one_stream(client, tokens) for _ in range(2)]
    return statistics.median((used - 1) / seconds for _, seconds, used in runs if seconds > 0)


def measure(path: str, folder: Path, threads: int, tokens: int) -> dict[str, object]:
    cluster = LocalCluster(folder, threads)
    command = [sys.executable, __file__, "--serve-like-the-tui"] if path == "tui" else None
    try:
        node = cluster.start(path, whole_model(), job_port=free_port(), command=command)
        cluster.wait_serving(node)
        speed = asyncio.run(decode_tok_s(node.job_port or 0, tokens))
        settings_file = folder / f"{path}.settings.json"
        settings = json.loads(settings_file.read_text()) if settings_file.exists() else {}
    finally:
        cluster.stop()
    return {"decode_tok_s": speed, "settings": settings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve-like-the-tui", metavar="CONFIG", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.serve_like_the_tui:
        serve_like_the_tui(arguments.serve_like_the_tui)
        return
    speeds: dict[str, list[float]] = {"cli": [], "tui": []}
    settings: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for round_number in range(arguments.rounds):
            for path in ("cli", "tui") if round_number % 2 == 0 else ("tui", "cli"):
                print(f"round {round_number + 1}: {path} ...", flush=True)
                folder = Path(scratch) / f"{path}-{round_number}"
                outcome = measure(path, folder, arguments.threads, arguments.tokens)
                speeds[path].append(float(outcome["decode_tok_s"]))  # type: ignore[arg-type]
                settings[path] = outcome["settings"]
    cli, tui = statistics.median(speeds["cli"]), statistics.median(speeds["tui"])
    results = {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": arguments.threads,
        "tokens": arguments.tokens,
        "cli_decode_tok_s": speeds["cli"],
        "tui_decode_tok_s": speeds["tui"],
        "tui_over_cli": tui / cli,
        "tui_settings": settings.get("tui"),
    }
    print(f"| launch | decode tok/s (median of {arguments.rounds}) | ratio |")
    print("| --- | --- | --- |")
    print(f"| run (CLI) | {cli:.1f} | 1.00 |")
    print(f"| TUI (NodeControl) | {tui:.1f} | {tui / cli:.2f} |")
    print(f"TUI node settings: {settings.get('tui')}; CPU capability {results['cpu_capability']}")
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
