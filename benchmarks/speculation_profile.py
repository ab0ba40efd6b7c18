"""Where a speculative step's time goes: compute per stage for 1 and K+1 rows, drafting, the hop.

The default model (bf16) splits as in benchmarks/speculation.py: an end model
with 1 local layer (the origin: embedding, layer 0, norm, head, sampling) and
one layer segment (layers 1-29, the layer node). After a prefill of a
grounded prompt, each measurement feeds one decode run of R rows at the same
position (the caches are cut back each time, as after a rejected draft):
- origin: embedding + local layer + head over R rows;
- stage: the segment over R rows, with verification rows attending one at a
  time (what default mode does, so verified tokens equal decode) and, for
  comparison, attending like a prefill chunk (the old way);
- drafting: one prompt-lookup proposal over the conversation so far;
- serialising the hidden rows for the hop.
From these it models one token's time at a given round trip per hop,
plain: origin(1) + stage(1) + RTT, and with K fully accepted drafts:
(origin(K+1) + stage(K+1) + RTT + draft) / (K+1), and prints the speedup
that bounds what speculation can reach on this CPU: the cost of one more row
against the cost of a whole step.

Prints a table and writes benchmarks/results/speculation_profile.json.
Usage: python benchmarks/speculation_profile.py [--threads 1] [--repeats 5] [--rtt-ms 0 20]
(about 2 minutes on a quiet 2-core AVX2 machine).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from language_pipes import paths  # noqa: E402
from language_pipes.engine.speculation import PromptLookup  # noqa: E402
from language_pipes.models.segment import SegmentBatch  # noqa: E402
from language_pipes.pipes.frames import tensor_bytes, tensor_from_bytes  # noqa: E402
from language_pipes.vocabulary import SequenceId  # noqa: E402
from support.tiny_models import default_model_folder, open_split  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "speculation_profile.json"
ROWS = (1, 3, 5, 7, 9, 13, 17)
TEXT = (
    "Repeat the following text exactly, word for word: The old lighthouse keeper climbed the narrow "
    "stairs every night to light the great lamp. Ships passing the rocky coast relied on its beam to "
    "find the harbour safely, and the keeper wrote the name of every ship he saw in a leather notebook."
)


def median_ms(action: Callable[[], object], repeats: int) -> float:
    action()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rtt-ms", type=float, nargs="+", default=[0.0, 20.0])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = default_model_folder(paths.model_dir())
    split = open_split(folder, (1, 30), torch.bfloat16)
    end, stage = split.end, split.segments[0]
    prompt = end.encode_chat([{"role": "user", "content": TEXT}])
    past = len(prompt)
    sequence = SequenceId("ab" * 16)
    hidden = end.local_layers.forward(end.embed(prompt), SegmentBatch((sequence,), (0,), (past,)))
    stage.forward(hidden, SegmentBatch((sequence,), (0,), (past,)))
    feed = prompt[-20:]  # any tokens: only their count matters here

    def origin(rows: int) -> None:
        batch = SegmentBatch((sequence,), (past,), (rows,), decode_runs=(rows > 1,))
        out = end.local_layers.forward(end.embed(feed[:rows]), batch)
        end.logits(out[0], decode_rows=rows > 1)

    def staged(rows: int, decode_run: bool = True) -> Callable[[], None]:
        states = torch.randn(1, rows, end.config.hidden_size).to(torch.bfloat16)
        batch = SegmentBatch((sequence,), (past,), (rows,), decode_runs=(decode_run and rows > 1,))
        return lambda: stage.forward(states, batch)

    table = []
    for rows in ROWS:
        entry = {"rows": rows, "origin_ms": median_ms(lambda rows=rows: origin(rows), args.repeats)}
        entry["stage_ms"] = median_ms(staged(rows), args.repeats)
        entry["stage_prefill_like_ms"] = median_ms(staged(rows, decode_run=False), args.repeats)
        states = torch.randn(1, rows, end.config.hidden_size).to(torch.bfloat16)
        entry["serialise_ms"] = median_ms(
            lambda states=states: tensor_from_bytes(tensor_bytes(states), torch.bfloat16, states.shape[-1]),
            args.repeats,
        )
        table.append(entry)
        print(
            f"rows {rows:2d}: origin {entry['origin_ms']:6.1f} ms  stage {entry['stage_ms']:6.1f} ms "
            f"(prefill-like {entry['stage_prefill_like_ms']:6.1f})  serialise {entry['serialise_ms']:.2f} ms",
            flush=True,
        )
    history = prompt + prompt[-60:]
    lookup = PromptLookup()
    draft_ms = median_ms(lambda: lookup.propose(history, 6), args.repeats)
    one = table[0]
    step_1 = one["origin_ms"] + one["stage_ms"]
    models = []
    for rtt in args.rtt_ms:
        plain = step_1 + rtt + one["serialise_ms"]
        for entry in table[1:]:
            spec = entry["origin_ms"] + entry["stage_ms"] + rtt + entry["serialise_ms"] + draft_ms
            models.append(
                {"rtt_ms": rtt, "k": entry["rows"] - 1, "speedup_all_accepted": entry["rows"] * plain / spec}
            )
    last = table[-1]
    per_row_ms = (last["origin_ms"] + last["stage_ms"] - step_1) / (last["rows"] - 1)
    bounds = {str(rtt): (step_1 + rtt) / per_row_ms for rtt in args.rtt_ms}
    print(
        f"\ndraft (prompt lookup) {draft_ms:.3f} ms; one step {step_1:.1f} ms; "
        f"each extra row {per_row_ms:.1f} ms"
    )
    print("modelled speedup with every draft accepted (K drafts per step):")
    print(f"{'RTT ms':>7} " + " ".join(f"K={entry['rows'] - 1:<4}" for entry in table[1:]) + "  K->inf")
    for rtt in args.rtt_ms:
        cells = " ".join(f"{m['speedup_all_accepted']:<6.2f}" for m in models if m["rtt_ms"] == rtt)
        print(f"{rtt:7.0f} {cells}  {bounds[str(rtt)]:.2f}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "machine": platform.machine(),
                "threads": args.threads,
                "prompt_tokens": past,
                "rows": table,
                "draft_ms": draft_ms,
                "extra_row_ms": per_row_ms,
                "modelled": models,
                "speedup_bound_by_rtt_ms": bounds,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
