"""Each ``data_type`` on the default model: speed, memory and quality against bfloat16, one run.

Every data type runs in a process of its own (so peak RSS is its own), with the whole
model in one end model (embedding, all 30 layers, head). Per data type:

- load: seconds to load (and quantize) the model; weight bytes held; RSS and peak RSS;
- decode ms/token at 1 row (one sequence) and per step at 16 rows (16 sequences);
- perplexity of the fixed text ``benchmarks/data/perplexity_text.txt`` (teacher forced,
  prefill in chunks), and the share of positions whose greedy next token equals bfloat16's.

Then, in this process: each decoder linear shape of the default model at 1, 16 and 256
rows, bf16 ``F.linear`` against the int8 and int4 kernels (the "faster path" table).

    python benchmarks/quantization.py [--data-types bfloat16,int8,int4] [--text-tokens 2048]

Prints a table and writes benchmarks/results/quantization.json. Records
``torch.backends.cpu.get_cpu_capability()`` and the thread count.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from language_pipes.models.end_model import EndModel
from language_pipes.models.quantization import QuantizedLinear
from language_pipes.models.quantization import weight_format as make_weight_format
from language_pipes.models.segment import SegmentBatch
from language_pipes.vocabulary import SequenceId

HERE = Path(__file__).resolve().parent
TEXT = HERE / "data" / "perplexity_text.txt"
RESULTS = HERE / "results" / "quantization.json"
SHAPES = {  # name: (out, in) of the default model's decoder linears (fused as they run) and head
    "q+k+v": (960, 576),
    "o_proj": (576, 576),
    "gate+up": (3072, 576),
    "down_proj": (576, 1536),
    "lm_head": (49152, 576),
}


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def _step(model: EndModel, ids: list[str], starts: list[int], chunks: list[list[int]]) -> torch.Tensor:
    batch = SegmentBatch(
        tuple(SequenceId(s) for s in ids), tuple(starts), tuple(len(chunk) for chunk in chunks)
    )
    hidden = model.embed([token for chunk in chunks for token in chunk])
    hidden = model.local_layers.forward(hidden, batch)
    return model.logits(hidden[0])


def _held_bytes(model: EndModel) -> int:
    seen: dict[int, int] = {}
    for part in (model.embedding, model.norm, model.head, model.local_layers.layers):
        for tensor in [*part.parameters(), *part.buffers()]:
            seen[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
    return sum(seen.values())


def measure_one(data_type: str, text_tokens: int, chunk: int, decode_steps: int) -> dict[str, Any]:
    """Everything for one data type, in this (fresh) process."""
    from language_pipes.models.default_model import prepare_default_model

    folder = prepare_default_model()
    rss_before = _rss_kib("VmRSS")
    started = time.perf_counter()
    fmt = make_weight_format(data_type)
    model = EndModel("bench", folder, num_local_layers=10_000, dtype=fmt.activation_dtype, weights=fmt)
    load_s = time.perf_counter() - started
    result: dict[str, Any] = {
        "data_type": data_type,
        "load_s": round(load_s, 2),
        "weights_mib": round(_held_bytes(model) / 2**20, 1),
        "rss_after_load_mib": round(_rss_kib("VmRSS") / 1024, 1),
        "rss_load_delta_mib": round((_rss_kib("VmRSS") - rss_before) / 1024, 1),
        "head_quantized": isinstance(model.head, QuantizedLinear),
    }
    tokens = model.tokenizer.encode(TEXT.read_text())[:text_tokens]
    # Perplexity and greedy next tokens, teacher forced over the text.
    nll, predicted, position = 0.0, [], 0
    started = time.perf_counter()
    while position < len(tokens) - 1:
        piece = tokens[position : min(position + chunk, len(tokens) - 1)]
        logits = _step(model, ["ppl"], [position], [piece])
        targets = torch.tensor(tokens[position + 1 : position + 1 + len(piece)])
        nll += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
        predicted.extend(logits.argmax(dim=-1).tolist())
        position += len(piece)
    model.local_layers.release(SequenceId("ppl"))
    result["prefill_tok_per_s"] = round(position / (time.perf_counter() - started), 1)
    result["perplexity"] = round(math.exp(nll / position), 4)
    result["predicted"] = predicted
    # Decode at 1 row and at 16 rows.
    prompt = tokens[:32]
    for rows in (1, 16):
        ids = [f"d{rows}-{i}" for i in range(rows)]
        logits = _step(model, ids, [0] * rows, [prompt] * rows)
        last = logits.view(rows, len(prompt), -1)[:, -1].argmax(dim=-1).tolist()
        times = []
        for step in range(decode_steps):
            began = time.perf_counter()
            logits = _step(model, ids, [len(prompt) + step] * rows, [[t] for t in last])
            times.append(time.perf_counter() - began)
            last = logits.argmax(dim=-1).tolist()
        for sequence_id in ids:
            model.local_layers.release(SequenceId(sequence_id))
        step_ms = statistics.median(times[1:]) * 1000
        result[f"decode_{rows}_ms_per_step"] = round(step_ms, 2)
        result[f"decode_{rows}_tok_per_s"] = round(rows / step_ms * 1000, 1)
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def _best_ms(function: Any, repeats: int) -> float:
    function()
    best = math.inf
    for _ in range(repeats):
        began = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - began)
    return best * 1000


def kernel_table(repeats: int) -> list[dict[str, Any]]:
    """bf16 ``F.linear`` against the int8 and int4 kernels for each shape at 1, 16 and 256 rows."""
    torch.manual_seed(0)
    rows_out = []
    for name, (out_features, in_features) in SHAPES.items():
        weight = torch.randn(out_features, in_features, dtype=torch.bfloat16) * 0.05
        int8 = QuantizedLinear.from_weight(weight, None, 8)
        int4 = QuantizedLinear.from_weight(weight, None, 4)
        for rows in (1, 16, 256):
            if name == "lm_head" and rows == 256:
                continue  # the head only ever sees the rows that are sampled
            inputs = torch.randn(rows, in_features, dtype=torch.bfloat16)
            with torch.inference_mode():
                timings = {
                    "bfloat16": _best_ms(lambda: torch.nn.functional.linear(inputs, weight), repeats),  # noqa: B023
                    "int8": _best_ms(lambda: int8(inputs), repeats),  # noqa: B023
                    "int4": _best_ms(lambda: int4(inputs), repeats),  # noqa: B023
                }
            rows_out.append({"shape": name, "rows": rows, **{k: round(v, 3) for k, v in timings.items()}})
    return rows_out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-types", default="bfloat16,int8,int4")
    parser.add_argument("--text-tokens", type=int, default=2048)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--decode-steps", type=int, default=12)
    parser.add_argument("--kernel-repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure_one(args.one, args.text_tokens, args.chunk, args.decode_steps)))
        return 0
    per_type: dict[str, dict[str, Any]] = {}
    for data_type in args.data_types.split(","):
        command = [sys.executable, __file__, "--one", data_type, "--text-tokens", str(args.text_tokens)]
        command += ["--chunk", str(args.chunk), "--decode-steps", str(args.decode_steps)]
        command += ["--threads", str(args.threads)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        per_type[data_type] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"measured {data_type}", file=sys.stderr, flush=True)
    reference = per_type.get("bfloat16")
    predicted = {data_type: entry.pop("predicted") for data_type, entry in per_type.items()}
    if reference is not None:
        for data_type, entry in per_type.items():
            same = sum(a == b for a, b in zip(predicted[data_type], predicted["bfloat16"], strict=True))
            entry["greedy_agreement"] = round(same / len(predicted[data_type]), 4)
            entry["perplexity_vs_bf16"] = round(entry["perplexity"] / reference["perplexity"], 4)
            for rows in (1, 16):
                key = f"decode_{rows}_ms_per_step"
                entry[f"decode_{rows}_speedup"] = round(reference[key] / entry[key], 2)
            entry["peak_rss_vs_bf16"] = round(entry["peak_rss_mib"] / reference["peak_rss_mib"], 2)
    kernels = kernel_table(args.kernel_repeats)
    report = {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "text_tokens": args.text_tokens,
        "data_types": per_type,
        "kernels_ms": kernels,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    _print_report(report)
    return 0


def _print_report(report: dict[str, Any]) -> None:
    print(f"cpu {report['cpu_capability']}, torch {report['torch']}, {report['threads']} threads")
    columns = [
        ("data_type", "type"),
        ("load_s", "load s"),
        ("weights_mib", "weights MiB"),
        ("peak_rss_mib", "peak RSS MiB"),
        ("decode_1_ms_per_step", "1-row ms/tok"),
        ("decode_1_speedup", "x bf16"),
        ("decode_16_ms_per_step", "16-row ms/step"),
        ("decode_16_speedup", "x bf16"),
        ("perplexity", "ppl"),
        ("perplexity_vs_bf16", "x bf16"),
        ("greedy_agreement", "agree"),
    ]
    print(" | ".join(title for _, title in columns))
    for entry in report["data_types"].values():
        print(" | ".join(str(entry.get(key, "")) for key, _ in columns))
    print("kernel ms (best of repeats): shape rows | bfloat16 int8 int4")
    for row in report["kernels_ms"]:
        timings = " ".join(f"{row[key]:8.3f}" for key in ("bfloat16", "int8", "int4"))
        print(f"{row['shape']:>9} {row['rows']:>4} | {timings}")


if __name__ == "__main__":
    raise SystemExit(main())
