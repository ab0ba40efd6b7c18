"""The reference: transformers ``generate`` in one process, batch 1 and batched, no server in between.

Run by the suite as a child process (so its peak RSS is its own) and prints one JSON object:
TTFT and decode ms/token of one sequence, aggregate tok/s of a batch of B identical prompts
for each B in ``--batches``, the TTFT of the long prompt, and the process's peak RSS.

    python benchmarks/anchors/reference.py --folder MODEL_DIR --threads 2 --tokens 128 --batches 1,4,16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from anchors.load import DECODE_PROMPT, long_prompt_text  # noqa: E402
from anchors.servers import peak_rss_mb  # noqa: E402


def chat_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> torch.Tensor:
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    return torch.tensor([tokenizer.encode(str(rendered), add_special_tokens=False)])


def generate_seconds(model: PreTrainedModel, ids: torch.Tensor, new: int) -> float:
    """Wall time of one greedy ``generate`` of exactly ``new`` tokens."""
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new, do_sample=False
        )
    return time.perf_counter() - start


def measure(
    folder: Path, threads: int, tokens: int, batches: list[int], long_tokens: int
) -> dict[str, object]:
    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()

    def timed(ids: torch.Tensor, new: int) -> float:
        return generate_seconds(model, ids, new)

    ids = chat_ids(tokenizer, f"[request 0] {DECODE_PROMPT}")
    timed(ids, 8)  # warm up kernels
    ttft = statistics.median(timed(ids, 1) for _ in range(3))
    full = timed(ids, tokens)
    results: dict[str, object] = {
        "single": {
            "ttft_s": ttft,
            "tpot_ms": 1000 * (full - ttft) / (tokens - 1),
            "completion_tokens": [tokens],
        }
    }
    for batch in batches:
        wall = timed(ids.repeat(batch, 1), tokens)
        results[f"concurrent@{batch}"] = {
            "aggregate_tok_s": batch * tokens / wall,
            "wall_s": wall,
            "completed": batch,
        }
    long_prompt = long_prompt_text(lambda text: chat_ids(tokenizer, text).shape[1], long_tokens)
    long_ids = chat_ids(tokenizer, long_prompt)
    results["long_prompt"] = {
        "prompt_tokens": long_ids.shape[1],
        "idle_ttft_s": statistics.median(timed(long_ids, 1) for _ in range(2)),
        "loaded_error": "not applicable: one generate call has no other streams",
    }
    results["peak_rss_mb"] = {"process": round(peak_rss_mb(os.getpid()), 1)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--tokens", type=int, required=True)
    parser.add_argument("--batches", required=True, help="comma-separated batch sizes")
    parser.add_argument("--long-prompt-tokens", type=int, required=True)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    print(json.dumps(measure(args.folder, args.threads, args.tokens, batches, args.long_prompt_tokens)))


if __name__ == "__main__":
    main()
