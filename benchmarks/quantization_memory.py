"""Where a layer node's memory goes, per ``data_type``: import baseline, weights, load peak, serving peak.

A layer node hosting every decoder layer of the default model, each data type in a
process of its own (so its peak is its own): the process imports what a node imports
(``language_pipes.node``: torch, transformers, the network stack), then loads all layers
into one :class:`LayerSegment` as a node does (quantizing while loading), then serves
a 128-token prefill and 16 decode steps. Per data type it records

- ``baseline``: RSS after the imports, before any weight (what no data type can shrink);
- ``load peak`` / ``after load``: peak and current RSS around the load (VmHWM reset first);
- ``file`` / ``anon``: RSS backed by files (memory-mapped checkpoint pages still mapped)
  and anonymous memory, after the load; ``mapped checkpoint``: whether a mapping of the
  safetensors file is still open then;
- ``serve peak``: peak RSS over load and serving;
- ``weights``: bytes of the tensors the layers hold;
- every RSS figure also *above the baseline*, the part the data type decides.

Ratios are against bfloat16 measured in the same run, both total and above the baseline.

    python benchmarks/quantization_memory.py [--data-types bfloat16,int8,int4]

About 40 s on a quiet 2-core machine. Prints a table and writes
benchmarks/results/quantization_memory.json, with ``torch.backends.cpu.get_cpu_capability()``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "quantization_memory.json"
PREFILL_TOKENS = 128
DECODE_STEPS = 16
MIB = 1024 * 1024


def _status_mib() -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon and RssFile of this process, MiB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[name] = round(int(value.split()[0]) / 1024, 1)
    return fields


def _reset_peak() -> None:
    """Make VmHWM the current RSS (Linux: writing 5 to clear_refs resets the peak)."""
    Path("/proc/self/clear_refs").write_text("5")


def _trim() -> None:
    """Collect garbage and hand glibc's free heap pages back, so RSS shows what is really held."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def _checkpoint_mapped(folder: Path) -> bool:
    maps = Path("/proc/self/maps").read_text()
    return any(str(shard) in maps for shard in folder.glob("*.safetensors"))


def measure_one(data_type: str, model_dir: Path) -> dict[str, Any]:
    import torch

    import language_pipes.node  # noqa: F401  (what a node process imports before it loads)
    from language_pipes.models.default_model import prepare_default_model
    from language_pipes.models.partial import ModelSource
    from language_pipes.models.quantization import weight_format
    from language_pipes.models.segment import LayerSegment, SegmentBatch
    from language_pipes.vocabulary import SequenceId

    torch.set_num_threads(1)
    folder = prepare_default_model(model_dir)
    source = ModelSource.open(folder)
    weights = weight_format(data_type)
    viewed = source.with_weights(weights)
    _trim()
    baseline = _status_mib()
    _reset_peak()
    started = time.perf_counter()
    segment = LayerSegment(viewed, 0, source.num_layers, weights.activation_dtype, torch.device("cpu"))
    load_s = time.perf_counter() - started
    load_peak = _status_mib()["VmHWM"]
    _trim()
    after_load = _status_mib()
    mapped = _checkpoint_mapped(folder)
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
        for t in segment.layers.state_dict().values()
    }
    weights_mib = round(sum(storages.values()) / MIB, 1)

    sequence = SequenceId("0" * 32)
    segment.open(sequence, PREFILL_TOKENS + DECODE_STEPS)
    hidden_size = source.config.hidden_size
    with torch.inference_mode():
        hidden = torch.randn(1, PREFILL_TOKENS, hidden_size, dtype=weights.activation_dtype)
        segment.forward(hidden, SegmentBatch((sequence,), (0,), (PREFILL_TOKENS,)))
        for step in range(DECODE_STEPS):
            hidden = torch.randn(1, 1, hidden_size, dtype=weights.activation_dtype)
            segment.forward(hidden, SegmentBatch((sequence,), (PREFILL_TOKENS + step,), (1,)))
    serve_peak = _status_mib()["VmHWM"]
    base = baseline["VmRSS"]
    return {
        "data_type": data_type,
        "load_s": round(load_s, 2),
        "weights_mib": weights_mib,
        "baseline_rss_mib": base,
        "load_peak_rss_mib": load_peak,
        "after_load_rss_mib": after_load["VmRSS"],
        "after_load_file_rss_mib": after_load["RssFile"],
        "after_load_anon_rss_mib": after_load["RssAnon"],
        "baseline_file_rss_mib": baseline["RssFile"],
        "checkpoint_mapped_after_load": mapped,
        "serve_peak_rss_mib": serve_peak,
        "load_peak_above_baseline_mib": round(load_peak - base, 1),
        "after_load_above_baseline_mib": round(after_load["VmRSS"] - base, 1),
        "serve_peak_above_baseline_mib": round(serve_peak - base, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-types", default="bfloat16,int8,int4")
    parser.add_argument("--model-dir", type=Path, default=None, help="model store (default: the node's)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.model_dir is None:
        from language_pipes import paths

        args.model_dir = paths.model_dir()
    if args.one:
        print(json.dumps(measure_one(args.one, args.model_dir)))
        return 0
    per_type: dict[str, dict[str, Any]] = {}
    for data_type in args.data_types.split(","):
        command = [sys.executable, __file__, "--one", data_type, "--model-dir", str(args.model_dir)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        per_type[data_type] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"measured {data_type}", file=sys.stderr, flush=True)
    reference = per_type.get("bfloat16")
    if reference is not None:
        for entry in per_type.values():
            for key in ("serve_peak_rss_mib", "serve_peak_above_baseline_mib", "weights_mib"):
                entry[key.removesuffix("_mib") + "_vs_bf16"] = round(entry[key] / reference[key], 2)
    import torch

    report = {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "prefill_tokens": PREFILL_TOKENS,
        "decode_steps": DECODE_STEPS,
        "data_types": per_type,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    _print_report(report)
    return 0


def _print_report(report: dict[str, Any]) -> None:
    print(f"cpu {report['cpu_capability']}, torch {report['torch']}, MiB (above = above the import baseline)")
    columns = [
        ("data_type", "type"),
        ("load_s", "load s"),
        ("weights_mib", "weights"),
        ("baseline_rss_mib", "baseline"),
        ("load_peak_above_baseline_mib", "load peak above"),
        ("after_load_above_baseline_mib", "after load above"),
        ("after_load_file_rss_mib", "file RSS"),
        ("checkpoint_mapped_after_load", "ckpt mapped"),
        ("serve_peak_rss_mib", "serve peak"),
        ("serve_peak_rss_vs_bf16", "x bf16"),
        ("serve_peak_above_baseline_mib", "serve peak above"),
        ("serve_peak_above_baseline_vs_bf16", "x bf16"),
    ]
    print(" | ".join(title for _, title in columns))
    for entry in report["data_types"].values():
        print(" | ".join(str(entry.get(key, "")) for key, _ in columns))


if __name__ == "__main__":
    raise SystemExit(main())
