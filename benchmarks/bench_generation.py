"""Generation speed and memory of Language Pipes against transformers in one process, same run.

Measures, on the default model (bf16) with the same torch thread count:
- transformers ``generate`` in this process: TTFT and decode tok/s for one sequence,
  and aggregate tok/s for a batch of 8;
- Language Pipes with 1 node and 2 nodes (real processes, OpenAI API over HTTP):
  TTFT, decode tok/s of one stream, aggregate tok/s at 1/4/8 concurrent streams;
- peak RSS of a node hosting all layers against one hosting about half.

Prints a table and writes benchmarks/results/generation.json.
Usage: python benchmarks/bench_generation.py [--tokens 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
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
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster import (  # noqa: E402
    DEFAULT_MODEL,
    LocalCluster,
    end_only,
    free_port,
    half_model_memory,
    layers_only,
    whole_model,
)
from language_pipes.models.store import ModelStore  # noqa: E402

PROMPT = "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle."
RESULTS = Path(__file__).resolve().parent / "results" / "generation.json"


def reference(folder: Path, tokens: int, threads: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=False
    )
    ids = torch.tensor([tokenizer.encode(rendered, add_special_tokens=False)])

    def timed(batch: torch.Tensor, new: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(batch, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        return time.perf_counter() - start

    timed(ids, 8)  # warm up kernels
    ttft = statistics.median(timed(ids, 1) for _ in range(3))
    full = timed(ids, tokens)
    batch8 = ids.repeat(8, 1)
    timed(batch8, 4)
    full8 = timed(batch8, tokens)
    return {
        "ttft_s": ttft,
        "decode_tok_s": (tokens - 1) / (full - ttft),
        "batch8_tok_s": 8 * tokens / full8,
    }


async def one_stream(client: AsyncOpenAI, tokens: int) -> tuple[float, float, int]:
    """(ttft, decode seconds after the first token, completion tokens) of one streamed request."""
    start = time.perf_counter()
    first = None
    usage = 0
    stream = await client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": PROMPT}],
        max_completion_tokens=tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter()
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
    end = time.perf_counter()
    first = first or end
    return first - start, end - first, usage


async def measure_api(port: int, tokens: int, concurrency: tuple[int, ...]) -> dict[str, float]:
    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="bench", timeout=600)
    await one_stream(client, 16)  # warm up
    singles = [await one_stream(client, tokens) for _ in range(2)]
    ttft = statistics.median(s[0] for s in singles)
    decode = statistics.median((s[2] - 1) / s[1] for s in singles if s[1] > 0)
    result: dict[str, float] = {"ttft_s": ttft, "decode_tok_s": decode}
    for streams in concurrency:
        start = time.perf_counter()
        outcomes = await asyncio.gather(*(one_stream(client, tokens) for _ in range(streams)))
        result[f"aggregate_tok_s@{streams}"] = sum(o[2] for o in outcomes) / (time.perf_counter() - start)
    return result


def run(tokens: int, threads: int, concurrency: tuple[int, ...], core_per_node: bool) -> dict[str, object]:
    folder = ModelStore().ensure(DEFAULT_MODEL)
    results: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "model": DEFAULT_MODEL,
        "dtype": "bfloat16",
        "tokens": tokens,
        "torch_threads": threads,
        "core_per_node": core_per_node,
    }
    print("transformers reference ...", flush=True)
    all_cores = os.sched_getaffinity(0)
    if core_per_node:
        os.sched_setaffinity(0, {0})  # the reference gets one core too, like each node
    results["transformers"] = reference(folder, tokens, threads)
    os.sched_setaffinity(0, all_cores)
    with tempfile.TemporaryDirectory() as scratch:
        cluster = LocalCluster(Path(scratch) / "one", threads, core_per_node)
        try:
            print("1 node ...", flush=True)
            node = cluster.start("solo", whole_model(), job_port=free_port())
            cluster.wait_serving(node)
            results["one_node"] = asyncio.run(measure_api(node.job_port, tokens, concurrency))
            results["one_node"]["peak_rss_mb"] = node.peak_rss_mb()  # type: ignore[index]
        finally:
            cluster.stop()
        cluster = LocalCluster(Path(scratch) / "two", threads, core_per_node)
        try:
            print("2 nodes ...", flush=True)
            end = cluster.start("end", end_only(), job_port=free_port())
            layers = cluster.start("layers", layers_only(4), bootstrap=end.peer_port)
            cluster.wait_serving(end)
            results["two_nodes"] = asyncio.run(measure_api(end.job_port, tokens, concurrency))
            results["two_nodes"]["end_peak_rss_mb"] = end.peak_rss_mb()  # type: ignore[index]
            results["two_nodes"]["layer_peak_rss_mb"] = layers.peak_rss_mb()  # type: ignore[index]
        finally:
            cluster.stop()
        cluster = LocalCluster(Path(scratch) / "three", threads, core_per_node)
        try:
            print("3 nodes (memory of a half-model layer node) ...", flush=True)
            end = cluster.start("end", end_only(), job_port=free_port())
            first = cluster.start("layers-a", layers_only(half_model_memory(folder)), bootstrap=end.peer_port)
            time.sleep(4)
            cluster.start("layers-b", layers_only(4), bootstrap=end.peer_port)
            cluster.wait_serving(end)
            results["half_layer_node_peak_rss_mb"] = first.peak_rss_mb()
        finally:
            cluster.stop()
    return results


def table(results: dict[str, object]) -> str:
    ref = results["transformers"]
    one = results["one_node"]
    two = results["two_nodes"]
    assert isinstance(ref, dict) and isinstance(one, dict) and isinstance(two, dict)
    rows = [
        ("| metric | transformers | 1 node | 2 nodes |", ""),
        ("|---|---|---|---|", ""),
    ]
    lines = [r[0] for r in rows]
    lines.append(f"| TTFT (s) | {ref['ttft_s']:.3f} | {one['ttft_s']:.3f} | {two['ttft_s']:.3f} |")
    lines.append(
        f"| decode tok/s, 1 stream | {ref['decode_tok_s']:.1f} | {one['decode_tok_s']:.1f} "
        f"({one['decode_tok_s'] / ref['decode_tok_s']:.2f}×) | {two['decode_tok_s']:.1f} "
        f"({two['decode_tok_s'] / one['decode_tok_s']:.2f}× of 1 node) |"
    )
    for key in [k for k in one if k.startswith("aggregate")]:
        streams = key.split("@")[1]
        lines.append(
            f"| aggregate tok/s, {streams} streams | {reference_batch(ref, streams)} "
            f"| {one[key]:.1f} ({one[key] / one['aggregate_tok_s@1']:.2f}× of 1) "
            f"| {two[key]:.1f} ({two[key] / two['aggregate_tok_s@1']:.2f}× of 1) |"
        )
    lines.append(
        f"| peak RSS (MB) | – | {one['peak_rss_mb']:.0f} (all layers) | end {two['end_peak_rss_mb']:.0f}, "
        f"layers {two['layer_peak_rss_mb']:.0f}; "
        f"half-model layer node {results['half_layer_node_peak_rss_mb']:.0f} |"
    )
    return "\n".join(lines)


def reference_batch(reference_results: dict[str, float], streams: str) -> str:
    return f"{reference_results['batch8_tok_s']:.1f} (batch 8)" if streams == "8" else "–"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--concurrency", default="1,4,8")
    parser.add_argument(
        "--core-per-node",
        action="store_true",
        help="pin each node (and the reference) to its own core, as if every node had a machine of its own "
        "with that many cores; use with --threads 1",
    )
    args = parser.parse_args()
    concurrency = tuple(int(c) for c in args.concurrency.split(","))
    results = run(args.tokens, args.threads, concurrency, args.core_per_node)
    output = RESULTS.with_name("generation-core-per-node.json") if args.core_per_node else RESULTS
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    print(table(results))
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
