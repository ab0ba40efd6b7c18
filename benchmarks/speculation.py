"""Speculative decoding through the pipe against the same pipe without it, same run, same process.

The default model (bf16) runs as an end model (1 local layer) plus one layer
segment through the real scheduler (an in-process route: loopback without
sockets). ``--rtt-ms`` adds that many milliseconds to every step of the
route, standing in for one hop's round trip. Measured, greedy, with and
without speculation:
- single stream, input-grounded prompts (repeat / quote / edit a given text);
- single stream, open-ended prompts;
- 16 concurrent streams (half grounded, half open-ended): aggregate tokens/s.
Reports decode tokens/s, the ratio speculation / plain, the share of drafts
accepted, and whether the tokens were identical.

Prints a table and writes benchmarks/results/speculation.json.
Usage: python benchmarks/speculation.py [--tokens 48] [--threads 2] [--rtt-ms 0 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from language_pipes import paths  # noqa: E402
from language_pipes.engine.generator import ModelGenerator  # noqa: E402
from language_pipes.engine.scheduler import Scheduler  # noqa: E402
from language_pipes.engine.speculation import SpeculationSettings  # noqa: E402
from language_pipes.engine.types import Finished, GenerationRequest, SamplingParams, TextDelta  # noqa: E402
from language_pipes.models.segment import SegmentBatch  # noqa: E402
from language_pipes.pipes.route import Route  # noqa: E402
from support.tiny_models import default_model_folder, open_split  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "speculation.json"
TEXT = (
    "The old lighthouse keeper climbed the narrow stairs every night to light the great lamp. "
    "Ships passing the rocky coast relied on its beam to find the harbour safely, and the keeper "
    "wrote the name of every ship he saw in a leather notebook that he kept beside his bed."
)
GROUNDED = [
    f"Repeat the following text exactly, word for word:\n\n{TEXT}",
    f"Quote this paragraph back to me inside double quotes, changing nothing:\n\n{TEXT}",
    f"Edit this text so that 'keeper' becomes 'guardian'; leave everything else unchanged:\n\n{TEXT}",
]
OPEN_ENDED = [
    "Write a short story about a dragon who learns to cook.",
    "Explain how a rainbow forms, for a ten year old.",
    "Give me five ideas for a weekend trip in the mountains.",
]
STREAMS = 16


class DelayedRoute(Route):
    """An in-process route whose every step waits ``rtt_s`` more, like one hop across a real link."""

    def __init__(self, segments: list, rtt_s: float) -> None:  # type: ignore[type-arg]
        super().__init__(segments)
        self.rtt_s = rtt_s

    def forward(self, hidden: torch.Tensor, batch: SegmentBatch) -> torch.Tensor:
        if self.rtt_s:
            time.sleep(self.rtt_s)
        return super().forward(hidden, batch)


async def stream(
    generator: ModelGenerator, prompt: str, tokens: int
) -> tuple[list[int], float, float, Finished]:
    """Tokens, time to first token, time of the rest, and the Finished event of one request."""
    ids = generator.encode_chat([{"role": "user", "content": prompt}])
    request = GenerationRequest(ids, SamplingParams(temperature=0.0), max_new_tokens=tokens)
    start = time.perf_counter()
    first = 0.0
    produced: list[int] = []
    async for event in generator.generate(request):
        if isinstance(event, TextDelta):
            if not produced and event.token_ids:
                first = time.perf_counter() - start
            produced += event.token_ids
        elif isinstance(event, Finished):
            return produced, first, time.perf_counter() - start - first, event
    raise RuntimeError("no Finished event")


def measure(generator: ModelGenerator, prompts: list[str], tokens: int, together: bool) -> dict[str, object]:
    async def run() -> tuple[list[tuple[list[int], float, float, Finished]], float]:
        start = time.perf_counter()
        if together:
            done = await asyncio.gather(*(stream(generator, p, tokens) for p in prompts))
        else:
            done = [await stream(generator, p, tokens) for p in prompts]
        return list(done), time.perf_counter() - start

    done, wall = asyncio.run(run())
    produced = sum(len(tokens_) for tokens_, _, _, _ in done)
    decode_s = sum(rest for _, _, rest, _ in done)
    drafted = sum(f.drafted_tokens for _, _, _, f in done)
    accepted = sum(f.accepted_tokens for _, _, _, f in done)
    rate = produced / wall if together else (produced - len(done)) / decode_s
    return {
        "tokens_per_s": rate,
        "tokens": produced,
        "drafted": drafted,
        "accepted": accepted,
        "outputs": [tokens_ for tokens_, _, _, _ in done],
    }


def run(tokens: int, threads: int, rtts_ms: list[float], max_draft: int) -> dict[str, object]:
    torch.set_num_threads(threads)
    folder = default_model_folder(paths.model_dir())
    split = open_split(folder, (1, 30), torch.bfloat16)
    mixed = [(GROUNDED + OPEN_ENDED)[i % 6] for i in range(STREAMS)]
    cases = {
        "grounded": (GROUNDED, False),
        "open-ended": (OPEN_ENDED, False),
        f"{STREAMS} streams": (mixed, True),
    }
    rows: list[dict[str, object]] = []
    results: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
        "threads": threads,
        "tokens_per_request": tokens,
        "speculation_max_tokens": max_draft,
        "rows": rows,
    }
    for rtt in rtts_ms:
        route = DelayedRoute(split.segments, rtt / 1000)
        engines = {}
        for name, enabled in (("plain", False), ("speculation", True)):
            settings = SpeculationSettings(enabled=enabled, max_tokens=max_draft)
            scheduler = Scheduler(split.end, lambda route=route: route, speculation=settings)
            scheduler.start()
            engines[name] = (scheduler, ModelGenerator(split.end, scheduler))
        measure(engines["plain"][1], OPEN_ENDED[:1], 4, False)  # warm-up
        for case, (prompts, together) in cases.items():
            plain = measure(engines["plain"][1], prompts, tokens, together)
            speculative = measure(engines["speculation"][1], prompts, tokens, together)
            drafted = int(speculative["drafted"])  # type: ignore[call-overload]
            rows.append(
                {
                    "rtt_ms": rtt,
                    "case": case,
                    "plain_tokens_per_s": plain["tokens_per_s"],
                    "speculation_tokens_per_s": speculative["tokens_per_s"],
                    "ratio": float(speculative["tokens_per_s"]) / float(plain["tokens_per_s"]),  # type: ignore[arg-type]
                    "drafted": drafted,
                    "accepted": speculative["accepted"],
                    "acceptance": float(speculative["accepted"]) / drafted if drafted else 0.0,  # type: ignore[arg-type]
                    "identical_tokens": plain["outputs"] == speculative["outputs"],
                }
            )
            print(_row(rows[-1]), flush=True)
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps(results, indent=2))  # after every row: a cut-off run keeps its rows
        for scheduler, _ in engines.values():
            scheduler.stop()
    return results


def _row(row: dict[str, object]) -> str:
    return (
        f"{row['rtt_ms']:>6.0f}  {row['case']:<12} {row['plain_tokens_per_s']:>9.2f} "
        f"{row['speculation_tokens_per_s']:>9.2f} {row['ratio']:>6.2f}x {row['acceptance']:>7.0%} "
        f"{'yes' if row['identical_tokens'] else 'NO':>9}"
    )


HEADER = f"{'rtt ms':>6}  {'case':<12} {'plain t/s':>9} {'spec t/s':>9} " + (
    f"{'ratio':>7} {'accept':>7} {'identical':>9}"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rtt-ms", type=float, nargs="+", default=[0.0, 20.0])
    parser.add_argument("--max-draft", type=int, default=6)
    args = parser.parse_args()
    print(f"cpu capability {torch.backends.cpu.get_cpu_capability()}, {args.threads} threads")
    print(HEADER)
    run(args.tokens, args.threads, args.rtt_ms, args.max_draft)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
