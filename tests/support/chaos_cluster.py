"""A cluster whose layer nodes can be killed, restarted and drained: the node-loss tests and chaos script.

Built on :class:`support.node_process.NodeLauncher`. An end node serves the
API; layer nodes join it by bootstrap. A layer node is started one at a time
(each waits until the previous one announced the layers it claims, so placement
sees what the earlier ones took; their loads overlap) and can be:

* killed with ``SIGKILL`` (:meth:`ChaosCluster.kill`), a crash or power loss;
* frozen with ``SIGSTOP`` and thawed with ``SIGCONT`` (:meth:`ChaosCluster.freeze`,
  :meth:`ChaosCluster.thaw`): connected but silent, a hung machine;
* slowed (:meth:`ChaosCluster.slow`): stopped 80% of the time by a duty cycle
  (support/disturbances.py), an overloaded machine;
* drained with ``SIGTERM`` (:meth:`ChaosCluster.terminate`), a graceful leave;
* restarted with the very same config file, ports and identity
  (:meth:`ChaosCluster.restart`), each run logging to its own file so the
  layers it chose this time are read from this run's output.

:class:`StreamResult` / :func:`stream_chat` (support/chat_streams.py, imported
from here too) run one streaming greedy chat completion and classify it as
completed, failed or hung, which is what the tests and the chaos script count.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import psutil

from language_pipes.cli import new_network_key
from support.chat_streams import PROMPTS, Outcome, StreamResult, client_for, stream_chat
from support.disturbances import SlowDown, freeze, thaw
from support.node_process import DEFAULT_MODEL, NodeLauncher, NodeProcess

HALF_LAYERS_GIGABYTES = 0.3  # 15 of the default model's layers (see test_pipes_three_node)
ALL_LAYERS_GIGABYTES = 0.6  # every shared layer, 1-29
NUM_LAYERS = 30  # the default model's decoder layers
FIRST_SHARED_LAYER = 1  # layer 0 lives in the end model
RUNNING_LINE = re.compile(r"node \S+ is running")
PEER_NETWORK_LINE = re.compile(r"peer network on port")
LAYER_LINE = re.compile(r"loading layers (\d+)-(\d+) of (\S+)")
NODE_START_TIMEOUT_SECONDS = 300.0

LayerState = Literal["starting", "serving", "dead"]
Disturbance = Literal["frozen", "slow"]


@dataclass
class LayerNode:
    """One layer node across its restarts: the current process and what it hosts."""

    name: str
    memory_gigabytes: float
    process: NodeProcess
    state: LayerState = "starting"
    runs: int = 1
    layers: range | None = None
    # Set while the node is frozen or slowed; None while it runs normally.
    disturbance: Disturbance | None = None
    slow_down: SlowDown | None = None

    def log_text(self) -> str:
        try:
            return self.process.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def refresh(self) -> LayerState:
        """Move ``starting`` to ``serving`` once this run logged that it runs; notice a crash."""
        if self.state == "dead":
            return self.state
        if not self.process.is_running():
            self.state = "dead"
            return self.state
        if self.state == "starting":
            text = self.log_text()
            found = LAYER_LINE.search(text)
            if found is not None:
                self.layers = range(int(found.group(1)), int(found.group(2)) + 1)
            if RUNNING_LINE.search(text) is not None and self.layers is not None:
                self.state = "serving"
        return self.state

    def cpu_seconds(self) -> float:
        """User + system CPU time of this run's process (the node is one process)."""
        try:
            times = psutil.Process(self.process.process.pid).cpu_times()
        except psutil.NoSuchProcess:
            # The process is gone: it uses no more CPU.
            return 0.0
        return float(times.user + times.system)


def _run_command(config_path: Path) -> list[str]:
    script = shutil.which("language-pipes")
    if script is not None:
        return [script, "-c", str(config_path), "run"]
    return [sys.executable, "-m", "language_pipes", "-c", str(config_path), "run"]


def _full_log(node: NodeProcess) -> str:
    try:
        return node.log_path.read_text(errors="replace")
    except FileNotFoundError:
        return ""  # not created yet


def covers_all_layers(spans: Iterable[range], first: int = FIRST_SHARED_LAYER, end: int = NUM_LAYERS) -> bool:
    """True when the spans (inclusive-exclusive ``range`` objects) cover ``[first, end)`` together."""
    position = first
    for span in sorted(spans, key=lambda r: r.start):
        if span.start > position:
            break
        position = max(position, span.stop)
    return position >= end


@dataclass
class ChaosCluster:
    """An end node plus layer nodes that can be killed and brought back."""

    launcher: NodeLauncher
    network_key: str = field(default_factory=new_network_key)
    end: NodeProcess | None = None
    layers: list[LayerNode] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(cls, folder: Path, model_dir: Path) -> ChaosCluster:
        return cls(NodeLauncher(folder, model_dir))

    # -- starting --------------------------------------------------------------------------

    def start_end(self, *, wait: bool = True, **settings: Any) -> NodeProcess:
        """The end node: end model of the default model and the API, no layers beyond layer 0.

        ``wait=False`` returns once its peer network listens (layer nodes may
        join while it loads); :meth:`wait_until_servable` waits for the rest.
        """
        settings.setdefault("max_api_jobs", 32)
        # Outputs must not depend on which sequences share a step, so replays and loaded runs match
        # the undisturbed reference bit for bit (models/invariance.py).
        settings.setdefault("batch_invariant", True)
        self.end = self.launcher.start(
            "end", end_models=[DEFAULT_MODEL], network_key=self.network_key, **settings
        )
        if wait:
            self._wait_for_api(self.end)
        else:
            self._wait_for_line(self.end, PEER_NETWORK_LINE)
        return self.end

    def start_layer_nodes(self, nodes: Iterable[tuple[str, float]]) -> list[LayerNode]:
        """Start layer nodes ``(name, memory)`` with overlapping loads; return once all serve.

        Each node starts as soon as the previous one has announced the layers it
        claims (placement sees claims before they load), so the nodes' imports and
        weight loads overlap instead of running one after another.
        """
        started: list[LayerNode] = []
        for name, memory in nodes:
            if started:
                self._wait_for_claim(started[-1])
            started.append(self.add_layer_node(name, memory, wait=False))
        for node in started:
            self.wait_serving(node)
        return started

    def _wait_for_claim(self, node: LayerNode) -> None:
        self._wait_for_line(node.process, LAYER_LINE)

    @staticmethod
    def _wait_for_line(
        node: NodeProcess, line: re.Pattern[str], timeout: float = NODE_START_TIMEOUT_SECONDS
    ) -> None:
        deadline = time.monotonic() + timeout
        while line.search(_full_log(node)) is None:
            if not node.is_running():
                raise AssertionError(f"{node.node_id} exited while starting:\n{node.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{node.node_id} logged no {line.pattern!r} within {timeout:.0f} s")
            time.sleep(0.1)

    def add_layer_node(self, name: str, memory_gigabytes: float, *, wait: bool = True) -> LayerNode:
        """Start a layer node bootstrapping to the end node; by default wait until it serves its layers."""
        assert self.end is not None, "start the end node first"
        process = self.launcher.start(
            name,
            with_api=False,
            network_key=self.network_key,
            max_node_jobs=64,
            batch_invariant=True,
            layer_models=[{"model_id": DEFAULT_MODEL, "memory": memory_gigabytes}],
            bootstrap_nodes=[{"address": "127.0.0.1", "port": self.end.peer_port}],
        )
        node = LayerNode(name, memory_gigabytes, process)
        with self._lock:
            self.layers.append(node)
        if wait:
            self.wait_serving(node)
        return node

    def wait_serving(self, node: LayerNode, timeout: float = NODE_START_TIMEOUT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while node.refresh() == "starting":
            if time.monotonic() > deadline:
                raise AssertionError(f"{node.name} did not start within {timeout:.0f} s:\n{node.log_text()}")
            time.sleep(0.2)
        if node.state != "serving":
            raise AssertionError(f"{node.name} exited while starting:\n{node.log_text()[-4000:]}")

    def wait_until_servable(self, timeout: float = NODE_START_TIMEOUT_SECONDS) -> None:
        assert self.end is not None
        self._wait_for_api(self.end, timeout)
        self.end.wait_until_serving(DEFAULT_MODEL, timeout)

    @staticmethod
    def _wait_for_api(node: NodeProcess, timeout: float = NODE_START_TIMEOUT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not node.is_running():
                raise AssertionError(f"{node.node_id} exited before its API came up:\n{node.output()}")
            try:
                httpx.get(f"{node.base_url}/models", timeout=2)
                return
            except httpx.HTTPError:
                # Not listening yet: the node is still loading.
                time.sleep(0.3)
        raise AssertionError(f"{node.node_id}'s API did not come up:\n{node.output()}")

    # -- chaos -----------------------------------------------------------------------------

    def kill(self, node: LayerNode) -> None:
        """SIGKILL the node's process group: no goodbye, no drained sequences."""
        self.undisturb(node)
        with contextlib.suppress(ProcessLookupError):  # it already exited
            os.killpg(node.process.process.pid, signal.SIGKILL)
        node.process.process.wait(10)
        node.state = "dead"

    def freeze(self, node: LayerNode) -> None:
        """SIGSTOP the node: its sockets stay open, it answers nothing (see :meth:`thaw`)."""
        assert node.disturbance is None, f"{node.name} is already {node.disturbance}"
        freeze(node.process.process.pid)
        node.disturbance = "frozen"

    def slow(self, node: LayerNode) -> None:
        """Stop the node 80% of the time until :meth:`undisturb` (support/disturbances.py)."""
        assert node.disturbance is None, f"{node.name} is already {node.disturbance}"
        node.slow_down = SlowDown(node.process.process.pid).start()
        node.disturbance = "slow"

    def thaw(self, node: LayerNode) -> None:
        """SIGCONT a frozen node (the same as :meth:`undisturb`)."""
        self.undisturb(node)

    def undisturb(self, node: LayerNode) -> None:
        """End a freeze or a slow-down: the node runs normally again."""
        if node.slow_down is not None:
            node.slow_down.stop()
            node.slow_down = None
        if node.disturbance is not None:
            thaw(node.process.process.pid)
        node.disturbance = None

    def terminate(self, node: LayerNode) -> None:
        """SIGTERM the node (a graceful leave); returns at once, see :meth:`wait_exit`."""
        with contextlib.suppress(ProcessLookupError):  # it already exited
            os.killpg(node.process.process.pid, signal.SIGTERM)

    def wait_exit(self, node: LayerNode, timeout: float) -> int | None:
        """The exit code once the node exits within ``timeout``, else None (it is still running)."""
        try:
            code = node.process.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        node.state = "dead"
        return code

    def restart(self, node: LayerNode, *, wait: bool = True) -> None:
        """Start the node again from its config file: same ports, same identity, a fresh log."""
        assert node.state == "dead", f"{node.name} is still running"
        previous = node.process
        log_path = previous.folder / f"output-{node.runs + 1}.log"
        environment = {
            **os.environ,
            "LP_MODEL_DIR": str(self.launcher.model_dir),
            "LP_APP_DIR": str(previous.folder / "app"),
            "LP_TORCH_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                _run_command(previous.config_path),
                cwd=previous.folder,
                env=environment,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        node.process = dataclasses.replace(previous, process=process, log_path=log_path)
        self.launcher.nodes.append(node.process)
        node.runs += 1
        node.state = "starting"
        node.layers = None
        if wait:
            self.wait_serving(node)

    def serving(self) -> list[LayerNode]:
        return [node for node in self.layers if node.refresh() == "serving"]

    def can_lose(self, node: LayerNode) -> bool:
        """True when the other serving, undisturbed nodes still cover every shared layer without ``node``.

        A frozen node answers nothing and a slowed one may miss heartbeats, so
        neither counts: one disturbance at a time never leaves a layer uncovered.
        """
        others = [
            n.layers
            for n in self.serving()
            if n is not node and n.layers is not None and n.disturbance is None
        ]
        return covers_all_layers(r for r in others if r is not None)

    def stop_all(self) -> None:
        for node in self.layers:
            self.undisturb(node)
        self.launcher.stop_all()


__all__ = [
    "ALL_LAYERS_GIGABYTES",
    "HALF_LAYERS_GIGABYTES",
    "PROMPTS",
    "ChaosCluster",
    "LayerNode",
    "Outcome",
    "StreamResult",
    "client_for",
    "stream_chat",
]
