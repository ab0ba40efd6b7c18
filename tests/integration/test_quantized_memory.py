"""The memory estimate against measured RSS: a process loading every layer of the default model.

Placement and the TUI's estimate count each layer's packed weights
(``ModelSource.layer_nbytes``). A fresh process (tests/support/load_memory.py) loads
all 30 layers into one segment as a layer node does, at bfloat16 and at int8, and
reports its RSS above its own baseline: once loaded it must be the estimate (within
10 %), and its peak while loading at most 20 % above it (the copies a load makes are
freed as it goes, and leave RSS when freed: models/heap.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parents[1] / "support" / "load_memory.py"


@pytest.fixture(scope="module")
def measured(default_model_dir: Path) -> dict[str, dict[str, int]]:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(default_model_dir), "bfloat16", "int8"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result: dict[str, dict[str, int]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("data_type", ["bfloat16", "int8"])
def test_loaded_layers_take_the_estimated_memory(measured: dict[str, dict[str, int]], data_type: str) -> None:
    figures = measured[data_type]
    assert abs(figures["loaded_above"] - figures["estimate"]) / figures["estimate"] < 0.10, figures


@pytest.mark.parametrize("data_type", ["bfloat16", "int8"])
def test_peak_while_loading_stays_near_the_estimate(
    measured: dict[str, dict[str, int]], data_type: str
) -> None:
    figures = measured[data_type]
    assert figures["peak_above"] / figures["estimate"] < 1.20, figures


def test_int8_takes_about_half_the_memory_of_bfloat16(measured: dict[str, dict[str, int]]) -> None:
    assert measured["int8"]["peak_above"] < 0.6 * measured["bfloat16"]["peak_above"]
