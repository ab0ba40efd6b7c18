"""What every served anchor shares: its settings, a running server handle, readiness and peak memory.

An anchor's ``start`` returns a :class:`RunningServer` (an OpenAI-compatible base URL, the model
name it answers to, the processes behind it) or raises :class:`AnchorUnavailable` with the
reason, which the suite reports in that anchor's column instead of dropping it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil


class AnchorUnavailable(Exception):
    """An anchor could not be set up or started; the message is the reason shown in the table."""


@dataclass(frozen=True)
class BenchSettings:
    """What every anchor of one suite run shares: model files, threads, scratch space, load size."""

    model_id: str
    model_folder: Path
    gguf_file: Path | None
    threads: int
    scratch: Path
    max_concurrency: int
    context_tokens: int  # the longest one sequence gets (llama.cpp n_ctx)
    kv_pool_tokens: int  # KV capacity shared by all sequences (transformers serve paged cache)
    # Each process on a core of its own (process i on core i), as if each had a machine to itself.
    core_per_process: bool = False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def thread_environment(threads: int) -> dict[str, str]:
    """The same thread settings for every process of the suite (torch, OpenMP, MKL, llama.cpp)."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
    }


def start_process(command: list[str], log_file: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A server process in its own session (so its whole group can be stopped), output to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("wb") as log:
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def stop_processes(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process group, then SIGKILL what is still alive after 15 s."""
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a process and, summed in, of the children it spawned."""
    total = 0.0
    try:
        processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        # the process is gone: nothing left to read
        return 0.0
    for process in processes:
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
        except FileNotFoundError:
            # a child that exited between listing and reading
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) / 1024
    return total


@dataclass
class RunningServer:
    """A started OpenAI-compatible server: where to reach it and the named processes behind it."""

    base_url: str
    model: str
    processes: dict[str, subprocess.Popen[bytes]]
    logs: dict[str, Path]
    notes: list[str] = field(default_factory=list)
    on_stop: Callable[[], None] | None = None

    def peak_rss_mb(self) -> dict[str, float]:
        return {name: round(peak_rss_mb(process.pid), 1) for name, process in self.processes.items()}

    def stop(self) -> None:
        stop_processes(list(self.processes.values()))
        if self.on_stop is not None:
            self.on_stop()

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                tail = self.logs[name].read_text(errors="replace").strip().splitlines()[-3:]
                raise AnchorUnavailable(f"{name} exited with {process.returncode}: {' | '.join(tail)[-300:]}")


def wait_port_open(port: int, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Wait until something listens on 127.0.0.1:``port``; fail if ``process`` exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AnchorUnavailable(f"process exited with {process.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            # nothing listening yet
            time.sleep(0.5)
    raise AnchorUnavailable(f"nothing listened on port {port} within {timeout_s:.0f} s")


def wait_until_answering(server: RunningServer, timeout_s: float) -> None:
    """Poll a one-token chat completion until the server answers one, its process dies, or time runs out."""
    deadline = time.monotonic() + timeout_s
    body = {"model": server.model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    last_problem = "no answer yet"
    while time.monotonic() < deadline:
        server.check_alive()
        try:
            reply = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=60)
            # a 200 must carry choices: some servers (Language Pipes 2.5.0) answer errors with HTTP 200
            if reply.status_code == 200 and '"choices"' in reply.text:
                return
            last_problem = f"HTTP {reply.status_code}: {reply.text[:200]}"
        except httpx.HTTPError as error:
            # not listening yet, or still loading: keep polling until the deadline
            last_problem = f"{type(error).__name__}"
        time.sleep(1)
    raise AnchorUnavailable(f"did not answer within {timeout_s:.0f} s ({last_problem})")
