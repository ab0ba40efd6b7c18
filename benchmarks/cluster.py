"""Start local Language Pipes node processes for benchmarks (real processes, real sockets).

Nodes run on 127.0.0.1, or each in a host of a :class:`language_pipes.testbed.netns.Testbed`
(``host=``), where its peer and lane traffic passes through that host's delay proxy.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import tomlkit
import torch

from language_pipes.models.partial import ModelSource
from language_pipes.pipes.placement import KV_HEADROOM_TOKENS
from language_pipes.testbed.netns import API_PORT, PEER_PORT, Host, node_settings

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class RunningNode:
    name: str
    process: subprocess.Popen[bytes]
    job_port: int | None
    peer_port: int
    address: str = "127.0.0.1"  # where its API and peer port are reached

    def peak_rss_mb(self) -> float:
        """Peak resident memory (VmHWM) of the node process so far."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return psutil.Process(self.process.pid).memory_info().rss / 2**20


class LocalCluster:
    """Writes one TOML per node into ``folder`` and runs ``language-pipes -c FILE run`` for each."""

    def __init__(self, folder: Path, torch_threads: int, core_per_node: bool = False) -> None:
        self.folder = folder
        self.torch_threads = torch_threads
        # Pin node i to core i: each node computes on its own core, like nodes on separate machines.
        self.core_per_node = core_per_node
        self.nodes: list[RunningNode] = []
        folder.mkdir(parents=True, exist_ok=True)

    def start(
        self,
        name: str,
        body: str,
        *,
        job_port: int | None = None,
        bootstrap: RunningNode | int | None = None,
        host: Host | None = None,
        command: list[str] | None = None,
    ) -> RunningNode:
        """Start one node from a written TOML.

        With ``host`` it runs in that testbed namespace (``job_port``: any value); ``command``
        (given the TOML path last) replaces ``language_pipes -c TOML run``.
        """
        lines = [f'node_id = "{name}"', f"torch_threads = {self.torch_threads}"]
        if host is None:
            peer_port, address = free_port(), "127.0.0.1"
            lines.append(f"peer_port = {peer_port}")
            if job_port is not None:
                lines.append(f"job_port = {job_port}")
        else:
            settings = node_settings(host, with_api=job_port is not None)
            peer_port, address = PEER_PORT, host.address
            job_port = API_PORT if job_port is not None else None
            lines.append(tomlkit.dumps(settings))
        if job_port is not None:
            lines.append("max_api_jobs = 64")
        lines.append("max_node_jobs = 64")
        lines.append(body)
        if bootstrap is not None:
            address, port = (
                (bootstrap.address, bootstrap.peer_port)
                if isinstance(bootstrap, RunningNode)
                else ("127.0.0.1", bootstrap)
            )
            lines.append(f'[[bootstrap_nodes]]\naddress = "{address}"\nport = {port}')
        config = self.folder / f"{name}.toml"
        config.write_text("\n".join(lines) + "\n")
        log = (self.folder / f"{name}.log").open("wb")
        env = {**os.environ, "LP_APP_DIR": str(self.folder / "app")}
        core = len(self.nodes) % (os.cpu_count() or 1)
        argv = (
            [*command, str(config)]
            if command
            else [sys.executable, "-m", "language_pipes", "-c", str(config), "run"]
        )
        process = subprocess.Popen(
            host.command(argv) if host is not None else argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, {core})) if self.core_per_node else None,
        )
        node = RunningNode(name, process, job_port, peer_port, address)
        self.nodes.append(node)
        return node

    def wait_serving(self, node: RunningNode, model: str = DEFAULT_MODEL, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node.process.poll() is not None:
                raise RuntimeError(f"{node.name} exited; see {self.folder / (node.name + '.log')}")
            try:
                models = httpx.get(f"http://{node.address}:{node.job_port}/v1/models", timeout=2).json()
                if any(m["id"] == model for m in models.get("data", [])):
                    return
            except httpx.HTTPError:
                pass  # not listening yet
            time.sleep(0.5)
        raise TimeoutError(f"{node.name} did not serve {model} within {timeout} s")

    def stop(self) -> None:
        for node in self.nodes:
            if node.process.poll() is None:
                os.killpg(node.process.pid, signal.SIGTERM)
        for node in self.nodes:
            try:
                node.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(node.process.pid, signal.SIGKILL)
        self.nodes.clear()


def whole_model(model: str = DEFAULT_MODEL) -> str:
    return f'end_models = ["{model}"]\n[[layer_models]]\nmodel_id = "{model}"\nmemory = 4'


def end_only(model: str = DEFAULT_MODEL) -> str:
    return f'end_models = ["{model}"]'


def layers_only(memory_gb: float, model: str = DEFAULT_MODEL) -> str:
    return f'[[layer_models]]\nmodel_id = "{model}"\nmemory = {memory_gb}'


def half_model_memory(folder: Path) -> float:
    """A layer-model budget (GB) that fits about half of the shared layers."""
    source = ModelSource.open(folder)
    per_layer = (
        source.layer_nbytes(torch.bfloat16) + source.kv_bytes_per_token(torch.bfloat16) * KV_HEADROOM_TOKENS
    )
    half = (source.num_layers - 1) // 2
    return round((half + 0.5) * per_layer / 1e9, 4)
