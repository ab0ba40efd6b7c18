"""Run as a script: load every layer of a model per data type and print RSS against the estimate (JSON).

For each data type in ``argv[2:]``, in this one process: RSS after a garbage collection
and heap trim (the baseline), the peak RSS while one :class:`LayerSegment` loads every
decoder layer (VmHWM reset first), the RSS once it is loaded, and the estimate placement
uses (``layer_nbytes`` times the layer count); then the segment is dropped. Used by
tests/integration/test_quantized_memory.py in a fresh process, so nothing else has
touched the heap.
"""

from __future__ import annotations

import ctypes
import gc
import json
import sys
from pathlib import Path

import torch

from language_pipes.models.partial import ModelSource
from language_pipes.models.quantization import weight_format
from language_pipes.models.segment import LayerSegment


def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _trim() -> None:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def measure(folder: Path, data_type: str) -> dict[str, int]:
    source = ModelSource.open(folder)
    weights = weight_format(data_type)
    viewed = source.with_weights(weights)
    estimate = viewed.layer_nbytes(weights.activation_dtype) * source.num_layers
    _trim()
    baseline = _rss_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    segment = LayerSegment(viewed, 0, source.num_layers, weights.activation_dtype, torch.device("cpu"))
    peak = _rss_bytes("VmHWM")
    _trim()
    loaded = _rss_bytes("VmRSS")
    del segment
    _trim()
    return {"estimate": estimate, "peak_above": peak - baseline, "loaded_above": loaded - baseline}


def main() -> None:
    torch.set_num_threads(1)
    folder = Path(sys.argv[1])
    print(json.dumps({data_type: measure(folder, data_type) for data_type in sys.argv[2:]}))


if __name__ == "__main__":
    main()
