"""The benchmark suite: this project against its anchors, same machine, model, threads, one run.

Anchors, each measured with the same client load (see ``anchors/load.py``):
- transformers ``generate`` in one process (batch 1 and batched), the reference;
- ``transformers serve --continuous-batching`` (one process, paged attention);
- this project with 1, 2 and 3 nodes on 127.0.0.1;
- Language Pipes 2.5.0 from PyPI (own virtualenv), 2 nodes: end model | layers;
- llama.cpp via llama-cpp-python (own virtualenv) on the default model's Q4_1 GGUF;
- one core per process: transformers ``generate`` pinned to core 0 and our 2 nodes pinned to
  cores 0 and 1, one thread each, as if every node had a machine of its own (on a 2-core machine
  the shared-core columns make two nodes take turns on the same cores).
Metrics: TTFT, decode ms/token, aggregate tok/s at 1/4/16 concurrent streams, TTFT of a
2,000-token prompt idle and while 8 streams decode, peak RSS of every process.
An anchor that cannot be set up is reported with the reason, never dropped.

    python benchmarks/suite.py [--quick] [--threads N] [--only this_2,lp250] [--retry-setup]

The first run builds benchmarks/.venvs/ (llama-cpp-python compiles llama.cpp: up to ~15 min).
Prints a table and writes benchmarks/results/suite.json and suite.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anchors import language_pipes_250, llama_cpp, paired, this_project, transformers_serve, venvs  # noqa: E402
from anchors.load import LoadClient, LoadPlan, long_prompt_text, run_plan  # noqa: E402
from anchors.report import paired_lines, plot, table, targets  # noqa: E402
from anchors.servers import AnchorUnavailable, BenchSettings, RunningServer, thread_environment  # noqa: E402
from language_pipes.models.store import DEFAULT_MODEL_ID, ModelStore  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REFERENCE_SCRIPT = Path(__file__).resolve().parent / "anchors" / "reference.py"


@dataclass(frozen=True)
class ServedAnchor:
    """One column of the table: a key for --only and the JSON, a label, and how to start it."""

    key: str
    label: str
    start: Callable[[BenchSettings], RunningServer]


SERVED_ANCHORS: tuple[ServedAnchor, ...] = (
    ServedAnchor("transformers_serve", "transformers serve --cb", transformers_serve.start),
    ServedAnchor("this_1", "ours, 1 node", lambda settings: this_project.start(settings, 1)),
    ServedAnchor("this_2", "ours, 2 nodes", lambda settings: this_project.start(settings, 2)),
    ServedAnchor("this_3", "ours, 3 nodes", lambda settings: this_project.start(settings, 3)),
    ServedAnchor("lp250", "LP 2.5.0, 2 nodes", language_pipes_250.start),
    ServedAnchor("llama_cpp", "llama.cpp (Q4_1)", llama_cpp.start),
)
REFERENCE_KEY = "transformers"
PINNED_REFERENCE_KEY = "transformers_1core"
PINNED_TWO_NODES = ServedAnchor(
    "this_2_1core", "ours, 2 nodes, 1 core each", lambda settings: this_project.start(settings, 2)
)
# Alternating rounds of the reference and our 2 nodes, single stream (anchors/paired.py).
PAIRED_KEYS = {"paired": False, "paired_1core": True}  # key -> one core per process
ALL_KEYS = (
    REFERENCE_KEY,
    *(anchor.key for anchor in SERVED_ANCHORS),
    PINNED_REFERENCE_KEY,
    PINNED_TWO_NODES.key,
    *PAIRED_KEYS,
)


def plan_for(quick: bool) -> tuple[LoadPlan, int]:
    """The load plan and the long prompt's length; --quick: fewer tokens and concurrency levels."""
    if quick:
        return LoadPlan(
            tokens=32, concurrency=(1, 4), single_runs=1, background_tokens=96, phase_timeout_s=240
        ), 1000
    return LoadPlan(
        tokens=128, concurrency=(1, 4, 16), single_runs=3, background_tokens=384, phase_timeout_s=900
    ), 2000


def run_reference(settings: BenchSettings, plan: LoadPlan, long_tokens: int) -> dict[str, object]:
    command = [
        sys.executable, str(REFERENCE_SCRIPT), "--folder", str(settings.model_folder),
        "--threads", str(settings.threads), "--tokens", str(plan.tokens),
        "--batches", ",".join(str(c) for c in plan.concurrency), "--long-prompt-tokens", str(long_tokens),
    ]  # fmt: skip
    try:
        completed = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=plan.phase_timeout_s * 2,
            env=thread_environment(settings.threads),
            preexec_fn=(lambda: os.sched_setaffinity(0, {0})) if settings.core_per_process else None,
        )
    except subprocess.TimeoutExpired:
        # a reference too slow for the budget is reported, not waited on forever
        return {"status": "failed", "reason": f"timed out after {plan.phase_timeout_s * 2:.0f} s"}
    if completed.returncode != 0:
        return {"status": "failed", "reason": completed.stderr.strip().splitlines()[-1:]}
    return {
        "status": "ok",
        "notes": [
            f"torch threads={settings.threads}" + (", pinned to core 0" if settings.core_per_process else ""),
            "batched: B identical prompts",
        ],
    } | json.loads(completed.stdout.strip().splitlines()[-1])


def run_served(
    anchor: ServedAnchor, settings: BenchSettings, plan: LoadPlan, client_args: dict
) -> dict[str, object]:
    begin = time.monotonic()
    try:
        server = anchor.start(settings)
    except AnchorUnavailable as error:
        return {"status": "unavailable", "reason": str(error)}
    except Exception as error:  # noqa: BLE001 - a crash while setting up one anchor must not end the suite
        traceback.print_exc()
        return {"status": "unavailable", "reason": f"setup crashed: {type(error).__name__}: {error}"}
    startup_s = time.monotonic() - begin
    try:
        client = LoadClient(server.base_url, server.model, **client_args)
        measured = asyncio.run(_measure(client, plan))
        server.check_alive()
        status = "failed" if "error" in measured else "ok"
        return {"status": status, "reason": measured.pop("error", None), "startup_s": round(startup_s, 1)} | {
            "notes": server.notes,
            "peak_rss_mb": server.peak_rss_mb(),
            **measured,
        }
    except AnchorUnavailable as error:
        return {"status": "failed", "reason": f"died while measured: {error}"}
    finally:
        server.stop()


async def _measure(client: LoadClient, plan: LoadPlan) -> dict[str, object]:
    try:
        return await run_plan(client, plan)
    finally:
        await client.close()


def machine_description() -> str:
    load = os.getloadavg()
    return (
        f"{platform.machine()} {platform.processor() or ''}".strip()
        + f", {os.cpu_count()} cores, load average at start {load[0]:.1f}, Python {platform.python_version()}"
    )


def run_suite(args: argparse.Namespace) -> dict[str, object]:
    plan, long_tokens = plan_for(args.quick)
    model_folder = ModelStore().ensure(DEFAULT_MODEL_ID)
    tokenizer = AutoTokenizer.from_pretrained(model_folder)

    def count_tokens(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    def count_chat_tokens(text: str) -> int:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": f"[request 0] {text}"}], add_generation_prompt=True, tokenize=False
        )
        return count_tokens(str(rendered))

    wanted = set(args.only.split(",")) if args.only else set(ALL_KEYS)
    unknown = wanted - set(ALL_KEYS)
    if unknown:
        raise SystemExit(f"unknown anchors {sorted(unknown)}; choose from {', '.join(ALL_KEYS)}")
    for name in ("lp250", "llama_cpp"):
        if name in wanted:
            print(f"setting up {name} venv (once) ...", flush=True)
            print(f"  {venvs.ensure(name, retry_failed=args.retry_setup).reason}", flush=True)
    max_concurrency = max(*plan.concurrency, 9)
    results: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "model": DEFAULT_MODEL_ID,
        "dtype": "bfloat16 (llama.cpp: its Q4_1 GGUF)",
        "mode": "quick" if args.quick else "full",
        "threads_per_process": args.threads,
        "plan": {
            "completion_tokens": plan.tokens,
            "concurrency": list(plan.concurrency),
            "single_runs": plan.single_runs,
            "long_prompt_tokens": long_tokens,
            "background_streams": 8,
            "background_tokens": plan.background_tokens,
        },
        "anchors": {},
    }
    anchors: dict[str, object] = results["anchors"]  # type: ignore[assignment]
    with tempfile.TemporaryDirectory(prefix="lp-suite-") as scratch:
        settings = BenchSettings(
            model_id=DEFAULT_MODEL_ID,
            model_folder=model_folder,
            gguf_file=llama_cpp.find_gguf(),
            threads=args.threads,
            scratch=Path(scratch),
            max_concurrency=max_concurrency,
            context_tokens=long_tokens + 2 * plan.background_tokens + 512,
            kv_pool_tokens=max_concurrency * (plan.background_tokens + 160) + 2 * long_tokens,
        )
        client_args = {
            "count_tokens": count_tokens,
            "long_prompt_body": long_prompt_text(count_chat_tokens, long_tokens),
        }
        if REFERENCE_KEY in wanted:
            print("transformers generate (reference) ...", flush=True)
            anchors[REFERENCE_KEY] = {"label": "transformers generate"} | run_reference(
                settings, plan, long_tokens
            )
        for anchor in SERVED_ANCHORS:
            if anchor.key in wanted:
                print(f"{anchor.label} ...", flush=True)
                anchors[anchor.key] = {"label": anchor.label} | run_served(
                    anchor, settings, plan, client_args
                )
                outcome = anchors[anchor.key]
                print(f"  {outcome['status']} {outcome.get('reason') or ''}", flush=True)  # type: ignore[index]
        pinned = replace(settings, threads=1, core_per_process=True)
        if PINNED_REFERENCE_KEY in wanted:
            print("transformers generate, 1 thread on core 0 ...", flush=True)
            anchors[PINNED_REFERENCE_KEY] = {"label": "transformers generate, 1 core"} | run_reference(
                pinned, plan, long_tokens
            )
        if PINNED_TWO_NODES.key in wanted:
            print(f"{PINNED_TWO_NODES.label} ...", flush=True)
            anchors[PINNED_TWO_NODES.key] = {"label": PINNED_TWO_NODES.label} | run_served(
                PINNED_TWO_NODES, pinned, plan, client_args
            )
        for key, core_per_process in PAIRED_KEYS.items():
            if key in wanted:
                print(f"paired single streams, transformers and ours, 2 nodes ({key}) ...", flush=True)
                chosen = pinned if core_per_process else settings
                results.setdefault("paired", {})[key] = paired.measure(  # type: ignore[union-attr]
                    chosen, lambda s: this_project.start(s, 2), client_args, plan.tokens
                )
    results["load_average_at_end"] = round(os.getloadavg()[0], 1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="32 tokens, 1 and 4 streams, 1,000-token prompt")
    parser.add_argument(
        "--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch/OMP threads per process"
    )
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(ALL_KEYS)}")
    parser.add_argument(
        "--retry-setup", action="store_true", help="retry virtualenv builds that failed before"
    )
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "suite.json")
    parser.add_argument("--report", type=Path, help="print an earlier run's table; measure nothing")
    args = parser.parse_args()
    if args.report:
        report(json.loads(args.report.read_text()))
        return
    results = run_suite(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    picture = args.output.with_suffix(".png")
    plot(results, picture)
    report(results)
    print(f"\nwritten {args.output} and {picture}")


def report(results: dict[str, object]) -> None:
    print()
    print(table(results))
    print()
    if paired_text := paired_lines(results):
        print(paired_text + "\n")
    print(targets(results))


if __name__ == "__main__":
    main()
