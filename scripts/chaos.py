"""Chaos run: stream greedy requests through a cluster while layer nodes are killed and restarted.

The script starts a cluster on 127.0.0.1 (one end-model node serving the API,
``--layer-nodes`` layer nodes), then:

1. computes the undisturbed reference: every prompt streamed greedy on the
   same cluster with no chaos, ``--streams`` at a time (the nodes are batch
   invariant, so each output is the one the prompt gets alone);
2. keeps ``--streams`` streaming greedy chat completions going for
   ``--seconds`` seconds while a seeded chaos loop, every few seconds,
   SIGKILLs a random layer node, restarts a dead one (same config, ports and
   identity), freezes one (``SIGSTOP`` for ``--freeze-seconds``, then
   ``SIGCONT``: connected but silent, so only the step deadline and the
   heartbeats notice) or slows one (stopped 80% of the time for
   ``--slow-seconds``), never taking away a node whose loss would leave a layer
   uncovered; each kind of disturbance happens at least once when it can;
3. counts requests started, completed, failed and hung, compares every
   completed output with the reference, prints a summary table and writes
   everything (settings, chaos events, each request) as JSON.

With ``--layout split`` (the default for three or more layer nodes) the first
two layer nodes split layers 1-29 between them (1-15 and 16-29) and the
others host every layer, so each layer range has at least two replicas and
routes combine segments of different nodes. ``--layout full``: every layer
node hosts every layer.

Exit code: 0 when every request completed with the reference output, 1 on
any failure, hang or mismatch, 2 when the cluster or reference could not be
set up.

Usage (from the repository root)::

    python scripts/chaos.py                                  # 8 streams, 2 minutes, seed 1
    python scripts/chaos.py --streams 4 --seconds 40 --seed 7 --json chaos.json
    python scripts/chaos.py --layer-nodes 2 --layout full --max-tokens 24

``--model-dir`` (default ``$LP_MODEL_DIR`` or the user's model store) is where
the nodes find the default model; the first run prepares it there. Node logs
stay under ``--workdir`` (a fresh temporary folder by default).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from language_pipes.paths import model_dir  # noqa: E402 - after the tests/ path for the support package
from support.chaos_cluster import (  # noqa: E402 - after the tests/ path for the support package
    ALL_LAYERS_GIGABYTES,
    HALF_LAYERS_GIGABYTES,
    PROMPTS,
    ChaosCluster,
    LayerNode,
    StreamResult,
    client_for,
    stream_chat,
)
from support.chaos_report import (  # noqa: E402 - after the tests/ path for the support package
    DISTURBANCES,
    ChaosAction,
    ChaosEvent,
    ChaosReport,
    ChaosSettings,
    Layout,
    RequestRecord,
)


def _layer_memories(settings: ChaosSettings) -> list[float]:
    if settings.layout == "split":
        return [HALF_LAYERS_GIGABYTES] * 2 + [ALL_LAYERS_GIGABYTES] * (settings.layer_nodes - 2)
    return [ALL_LAYERS_GIGABYTES] * settings.layer_nodes


def start_cluster(cluster: ChaosCluster, settings: ChaosSettings) -> None:
    cluster.start_end(max_api_jobs=max(8, settings.streams * 2), wait=False)
    memories = _layer_memories(settings)
    for node in cluster.start_layer_nodes((f"layers-{i + 1}", m) for i, m in enumerate(memories)):
        print(f"  {node.name}: layers {_span(node)}", flush=True)
    cluster.wait_until_servable()


def compute_reference(cluster: ChaosCluster, settings: ChaosSettings) -> dict[int, str]:
    """Each prompt streamed with no chaos, ``streams`` at a time (batch invariant): the expected outputs."""
    assert cluster.end is not None
    # Not under test: a generous timeout, the first steps also warm up every node.
    client = client_for(cluster.end, settings.hang_seconds * 4)
    results: dict[int, StreamResult] = {}

    def one(index: int) -> None:
        results[index] = stream_chat(client, index, settings.max_tokens, settings.hang_seconds * 4)

    for first in range(0, len(PROMPTS), settings.streams):
        workers = [
            threading.Thread(target=one, args=(index,))
            for index in range(first, min(first + settings.streams, len(PROMPTS)))
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    reference: dict[int, str] = {}
    for index in range(len(PROMPTS)):
        result = results.get(index)
        if result is None or result.outcome != "completed":
            problem = "no result" if result is None else f"{result.outcome}: {result.error}"
            raise RuntimeError(f"reference request {index} {problem}")
        reference[index] = result.text
    return reference


class ChaosRun:
    """The request streams and the chaos loop of one run."""

    def __init__(self, cluster: ChaosCluster, settings: ChaosSettings, report: ChaosReport) -> None:
        self.cluster = cluster
        self.settings = settings
        self.report = report
        self.random = random.Random(settings.seed)
        self.started = time.monotonic()
        self.stop_requests = threading.Event()
        self._lock = threading.Lock()
        self._done: set[ChaosAction] = set()
        self._timers: list[threading.Timer] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def stream_loop(self, stream: int) -> None:
        assert self.cluster.end is not None
        client = client_for(self.cluster.end, self.settings.hang_seconds)
        prompt_index = stream
        while not self.stop_requests.is_set():
            started_at = self.elapsed()
            result = stream_chat(client, prompt_index, self.settings.max_tokens, self.settings.hang_seconds)
            self._record(stream, started_at, result)
            prompt_index = (prompt_index + self.settings.streams) % len(PROMPTS)

    def _record(self, stream: int, started_at: float, result: StreamResult) -> None:
        index = result.prompt_index % len(PROMPTS)
        matches = result.text == self.report.reference[index] if result.outcome == "completed" else None
        record = RequestRecord(
            stream,
            round(started_at, 2),
            index,
            result.outcome,
            matches,
            round(result.seconds, 2),
            result.finish_reason,
            result.error,
            result.text,
        )
        with self._lock:
            self.report.requests.append(record)
        if result.outcome != "completed" or not matches:
            print(f"  [{started_at:6.1f}s] stream {stream}: {result.outcome} {result.error or 'mismatch'}")

    def chaos_loop(self) -> None:
        deadline = self.settings.seconds
        while True:
            pause = self.random.uniform(self.settings.kill_every_min, self.settings.kill_every_max)
            if self.elapsed() + pause >= deadline:
                return
            time.sleep(pause)
            self._act()

    def _act(self) -> None:
        with self._lock:
            dead = [node for node in self.cluster.layers if node.refresh() == "dead"]
            calm = [node for node in self.cluster.serving() if node.disturbance is None]
            losable = [node for node in calm if self.cluster.can_lose(node)]
        # Draw every choice every time so the sequence of draws depends only on the seed and the states.
        wants_restart = self.random.random() < 0.5
        kind_pick, node_pick = self.random.random(), self.random.random()
        room = self.elapsed() + max(self.settings.freeze_seconds, self.settings.slow_seconds)
        kinds: list[ChaosAction] = ["kill"] if losable else []
        if room < self.settings.seconds:
            kinds += ["freeze", "slow"] if losable else []
        untried = [kind for kind in DISTURBANCES if kind in kinds and kind not in self._done][:1]
        if dead and (wants_restart or not kinds) and not untried:
            node = dead[int(node_pick * len(dead))]
            self.cluster.restart(node, wait=False)
            self._event("restart", node)
            return
        if not kinds:
            return
        pool = untried or kinds
        kind = pool[int(kind_pick * len(pool))]
        candidates = losable
        node = candidates[int(node_pick * len(candidates))]
        self._done.add(kind)
        layers = _span(node)
        if kind == "kill":
            self.cluster.kill(node)
        elif kind == "freeze":
            self.cluster.freeze(node)
            self._later(self.settings.freeze_seconds, "thaw", node)
        else:
            self.cluster.slow(node)
            self._later(self.settings.slow_seconds, "unslow", node)
        self._event(kind, node, layers)

    def _later(self, seconds: float, action: ChaosAction, node: LayerNode) -> None:
        """End a freeze or slow-down after ``seconds`` (on a timer thread)."""

        def end() -> None:
            with self._lock:
                if node.disturbance is None:
                    return  # already ended (the run is over)
                self.cluster.undisturb(node)
            self._event(action, node, _span(node))

        timer = threading.Timer(seconds, end)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def end_disturbances(self) -> None:
        """Thaw and unslow every node whose disturbance is still running."""
        for timer in self._timers:
            timer.cancel()
        with self._lock:
            for node in self.cluster.layers:
                self.cluster.undisturb(node)

    def _event(self, action: ChaosAction, node: LayerNode, layers: str | None = None) -> None:
        event = ChaosEvent(round(self.elapsed(), 2), action, node.name, layers or "(loading)")
        self.report.events.append(event)
        print(f"  [{event.at_seconds:6.1f}s] {action} {node.name} {event.layers}", flush=True)

    def run(self) -> None:
        workers = [
            threading.Thread(target=self.stream_loop, args=(stream,), name=f"stream-{stream}")
            for stream in range(self.settings.streams)
        ]
        for worker in workers:
            worker.start()
        self.chaos_loop()
        for timer in self._timers:
            timer.join()  # the loop left room for every freeze and slow-down to end on time
        self.end_disturbances()
        remaining = self.settings.seconds - self.elapsed()
        if remaining > 0:
            time.sleep(remaining)
        self.stop_requests.set()
        for worker in workers:
            # A request in flight ends within its hang deadline; allow the deadline plus slack.
            worker.join(self.settings.hang_seconds + 30)


def _span(node: LayerNode) -> str:
    return f"{node.layers.start}-{node.layers.stop - 1}" if node.layers is not None else "(loading)"


def print_summary(report: ChaosReport) -> None:
    summary = report.summary()
    width = max(len(name) for name in summary)
    print("\nchaos summary")
    print("-" * (width + 10))
    for name, value in summary.items():
        print(f"{name:<{width}}  {value:>6}")
    print("-" * (width + 10))
    print("PASSED" if report.passed else "FAILED")


def parse_arguments(argv: list[str] | None = None) -> tuple[ChaosSettings, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=8, help="concurrent streaming requests")
    parser.add_argument("--seconds", type=float, default=120.0, help="how long the chaos phase runs")
    parser.add_argument("--seed", type=int, default=1, help="seed of the kill/restart choices")
    parser.add_argument("--layer-nodes", type=int, default=4, help="layer nodes (at least 2)")
    parser.add_argument("--layout", choices=["split", "full"], help="split (default from 3 nodes) or full")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens of every request")
    parser.add_argument(
        "--kill-every", default="4:10", help="MIN:MAX seconds between chaos actions (default 4:10)"
    )
    parser.add_argument("--hang-seconds", type=float, default=60.0, help="a request hangs after this")
    parser.add_argument(
        "--freeze-seconds", type=float, default=8.0, help="how long a frozen node stays stopped"
    )
    parser.add_argument("--slow-seconds", type=float, default=10.0, help="how long a slowed node stays slow")
    parser.add_argument("--model-dir", type=Path, help="model store (default $LP_MODEL_DIR)")
    parser.add_argument("--workdir", type=Path, help="node folders and logs (default: a new temp folder)")
    parser.add_argument("--json", type=Path, help="write the report here (default WORKDIR/chaos.json)")
    arguments = parser.parse_args(argv)
    if arguments.layer_nodes < 2:
        parser.error("--layer-nodes must be at least 2 (each layer needs two replicas)")
    layout: Layout = arguments.layout or ("split" if arguments.layer_nodes >= 3 else "full")
    if layout == "split" and arguments.layer_nodes < 3:
        parser.error("--layout split needs at least 3 layer nodes (two halves and one full replica)")
    low, _, high = arguments.kill_every.partition(":")
    settings = ChaosSettings(
        streams=arguments.streams,
        seconds=arguments.seconds,
        seed=arguments.seed,
        layer_nodes=arguments.layer_nodes,
        layout=layout,
        max_tokens=arguments.max_tokens,
        kill_every_min=float(low),
        kill_every_max=float(high or low),
        hang_seconds=arguments.hang_seconds,
        freeze_seconds=arguments.freeze_seconds,
        slow_seconds=arguments.slow_seconds,
    )
    return settings, arguments


def main(argv: list[str] | None = None) -> int:
    settings, arguments = parse_arguments(argv)
    workdir = arguments.workdir or Path(tempfile.mkdtemp(prefix="lp-chaos-"))
    json_path = arguments.json or workdir / "chaos.json"
    cluster = ChaosCluster.create(workdir / "nodes", arguments.model_dir or model_dir())
    report = ChaosReport(settings)
    print(f"chaos run: {settings}\nnode logs under {workdir}", flush=True)
    run = ChaosRun(cluster, settings, report)
    began = time.monotonic()
    try:
        try:
            start_cluster(cluster, settings)
            report.reference = compute_reference(cluster, settings)
        except (AssertionError, RuntimeError) as error:
            # The cluster or the undisturbed reference failed: nothing to measure.
            print(f"setup failed: {error}", file=sys.stderr)
            return 2
        print(
            f"reference ready after {time.monotonic() - began:.0f} s; "
            f"{settings.seconds:.0f} s of chaos, {settings.streams} streams",
            flush=True,
        )
        run.started = time.monotonic()
        run.run()
    finally:
        run.end_disturbances()
        cluster.stop_all()
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report.to_json(), indent=2))
    print_summary(report)
    print(f"report: {json_path}")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
