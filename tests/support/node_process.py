"""Start real ``language-pipes -c node.toml run`` processes for multi-process tests.

:class:`NodeLauncher` writes a config per node, starts each node in its own
process group with one torch thread, waits until a node's API lists a model
(failing with the node's output when it dies or takes too long), and kills
every node it started at :meth:`NodeLauncher.stop_all` (all at once, so a
cluster stops in the time of its slowest node).

The ``node_launcher`` fixture in tests/conftest.py wraps it; a module that wants
one node for many tests can use :class:`NodeLauncher` in a module-scoped fixture.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import tomlkit

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
STARTUP_TIMEOUT_SECONDS = 420.0
OUTPUT_TAIL_CHARACTERS = 6000
STOP_TIMEOUT_SECONDS = 15.0
SERVING_POLL_SECONDS = 0.2  # a GET of /v1/models each time: cheap for the node, and no half second lost


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def single_node_settings(model_id: str = DEFAULT_MODEL) -> dict[str, Any]:
    """Config keys for a node that holds a whole model by itself (end model + every layer)."""
    return {"end_models": [model_id], "layer_models": [{"model_id": model_id, "memory": 2}]}


@dataclass
class NodeProcess:
    """One running node process and where to find it."""

    node_id: str
    folder: Path
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    job_port: int
    peer_port: int
    api_keys: list[str] = field(default_factory=list)
    api_host: str = "127.0.0.1"

    @property
    def base_url(self) -> str:
        return f"http://{self.api_host}:{self.job_port}/v1"

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_keys[0]}"} if self.api_keys else {}

    def output(self) -> str:
        """The tail of everything the process printed."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no output)"
        return text[-OUTPUT_TAIL_CHARACTERS:]

    def is_running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """SIGTERM the node's process group, then SIGKILL it if it does not exit in time."""
        self.terminate()
        self.wait_stopped(time.monotonic() + timeout)

    def terminate(self) -> None:
        """SIGTERM the node's process group (a graceful leave); returns at once."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # it exited between poll and kill
                os.killpg(self.process.pid, signal.SIGTERM)

    def wait_stopped(self, deadline: float) -> None:
        """Wait until the process exits, SIGKILLing its group once ``deadline`` (monotonic) passed."""
        try:
            self.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):  # it exited just now
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(STOP_TIMEOUT_SECONDS)

    def wait_until_answering(self, timeout: float = STARTUP_TIMEOUT_SECONDS) -> None:
        """Block until the node's API answers ``GET /v1/models`` at all (whatever it lists)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.is_running():
                raise AssertionError(
                    f"node {self.node_id} exited with {self.process.returncode} before its API "
                    f"answered:\n{self.output()}"
                )
            try:
                httpx.get(f"{self.base_url}/models", headers=self.auth_headers(), timeout=5)
                return
            except httpx.HTTPError:
                # Not listening yet: the node is still loading its models.
                time.sleep(SERVING_POLL_SECONDS)
        raise AssertionError(
            f"node {self.node_id}'s API did not answer within {timeout:.0f} s:\n{self.output()}"
        )

    def wait_until_serving(
        self, model_id: str = DEFAULT_MODEL, timeout: float = STARTUP_TIMEOUT_SECONDS
    ) -> None:
        """Block until ``GET /v1/models`` lists ``model_id``; fail with the node's output otherwise."""
        deadline = time.monotonic() + timeout
        last_problem = "no answer yet"
        while time.monotonic() < deadline:
            if not self.is_running():
                raise AssertionError(
                    f"node {self.node_id} exited with {self.process.returncode} before serving "
                    f"{model_id}:\n{self.output()}"
                )
            try:
                response = httpx.get(f"{self.base_url}/models", headers=self.auth_headers(), timeout=5)
                listed = [card["id"] for card in response.json().get("data", [])]
                if model_id in listed:
                    return
                last_problem = f"{response.status_code} {response.text[:200]}"
            except (httpx.HTTPError, ValueError) as error:
                # Not listening yet (connection refused) or not answering JSON yet: keep waiting.
                last_problem = repr(error)
            time.sleep(SERVING_POLL_SECONDS)
        raise AssertionError(
            f"node {self.node_id} did not list {model_id} within {timeout:.0f} s "
            f"(last answer: {last_problem}):\n{self.output()}"
        )


def _node_command(config_path: Path) -> list[str]:
    script = shutil.which("language-pipes")
    if script is not None:
        return [script, "-c", str(config_path), "run"]
    return [sys.executable, "-m", "language_pipes", "-c", str(config_path), "run"]


class NodeLauncher:
    """Starts node processes sharing one model store; kills them all in :meth:`stop_all`."""

    def __init__(self, folder: Path, model_dir: Path) -> None:
        self.folder = folder
        self.model_dir = model_dir
        self.nodes: list[NodeProcess] = []

    def start(
        self,
        node_id: str,
        *,
        api_keys: list[str] | None = None,
        max_api_jobs: int = 5,
        with_api: bool = True,
        torch_threads: int = 1,
        command_prefix: tuple[str, ...] = (),
        environment: dict[str, str | None] | None = None,
        **settings: Any,
    ) -> NodeProcess:
        """Start ``language-pipes -c <folder>/<node_id>/node.toml run`` with ``settings`` as extra keys.

        ``command_prefix`` runs it elsewhere (``ip netns exec NS``); ``settings`` may set the ports
        and ``api_ip`` (the API is then reached at that address). ``environment`` overrides the
        node's environment variables (None removes one).
        """
        node_folder = self.folder / node_id
        app_dir = node_folder / "app"
        app_dir.mkdir(parents=True, exist_ok=True)
        job_port, peer_port = free_port(), free_port()
        config: dict[str, Any] = {
            "node_id": node_id,
            "peer_port": peer_port,
            "api_keys": list(api_keys or []),
            "max_api_jobs": max_api_jobs,
            "torch_threads": torch_threads,
            **settings,
        }
        if with_api:
            config.setdefault("job_port", job_port)
        job_port, peer_port = config.get("job_port", job_port), config["peer_port"]
        config_path = node_folder / "node.toml"
        config_path.write_text(tomlkit.dumps(config))
        log_path = node_folder / "output.log"
        environment_of_node = {
            **os.environ,
            "LP_MODEL_DIR": str(self.model_dir),
            "LP_APP_DIR": str(app_dir),
            "LP_TORCH_THREADS": str(torch_threads),
            "OMP_NUM_THREADS": str(torch_threads),
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
        for name, value in (environment or {}).items():
            if value is None:
                environment_of_node.pop(name, None)
            else:
                environment_of_node[name] = value
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [*command_prefix, *_node_command(config_path)],
                cwd=node_folder,
                env=environment_of_node,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        node = NodeProcess(
            node_id,
            node_folder,
            config_path,
            log_path,
            process,
            job_port,
            peer_port,
            list(api_keys or []),
            api_host=str(config.get("api_ip", "127.0.0.1")),
        )
        self.nodes.append(node)
        return node

    def stop_all(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """SIGTERM every node at once, then wait for all of them (one shared deadline, then SIGKILL)."""
        for node in reversed(self.nodes):
            node.terminate()
        deadline = time.monotonic() + timeout
        for node in reversed(self.nodes):
            node.wait_stopped(deadline)
        self.nodes.clear()
