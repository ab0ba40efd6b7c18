"""The Models page offers bf16 / int8 / int4 and shows how many layers of an installed model fit each.

A tiny random llama (4 layers) is installed in the test's model store; the
page is driven with Textual's pilot. The figures must be what placement would
compute for the same budget (pipes/placement.py), and a layer model added
with int8 is saved with that data type.
"""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path

import pytest
from textual.widgets import Input, Select, Static

from language_pipes.models.partial import ModelSource
from language_pipes.models.quantization import weight_format
from language_pipes.models.store import ModelStore
from language_pipes.pipes.placement import layers_that_fit
from language_pipes.tui.layer_estimate import GIGABYTE, estimate_layers
from language_pipes.tui.tabs.models import DATA_TYPES
from support.tiny_models import build_tiny_model
from support.tui_pilot import app_on_page, click

MODEL = "tiny-org/tiny-llama"
# Room for about 2 bf16 layers of the tiny model (weights plus KV headroom each): int8 / int4 fit more.
BUDGET_LAYERS = 2.5


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelStore:
    monkeypatch.setenv("LP_APP_DIR", str(tmp_path / "app"))
    monkeypatch.setenv("LP_MODEL_DIR", str(tmp_path / "models"))
    store = ModelStore()
    build_tiny_model("llama", store.local_path(MODEL))
    assert store.is_installed(MODEL)
    return store


def budget_gigabytes(store: ModelStore) -> float:
    source = ModelSource.open(store.local_path(MODEL))
    per_layer = source.layer_nbytes(weight_format("bfloat16").activation_dtype) + 16_384 * (
        source.kv_bytes_per_token(weight_format("bfloat16").activation_dtype)
    )
    return round(per_layer * BUDGET_LAYERS / GIGABYTE, 6)


def test_the_estimate_is_what_placement_computes_and_quantized_types_fit_more(store: ModelStore) -> None:
    memory = budget_gigabytes(store)
    estimates = {e.data_type: e for e in estimate_layers(store.local_path(MODEL), memory)}
    assert list(estimates) == ["bfloat16", "int8", "int4"]
    source = ModelSource.open(store.local_path(MODEL))
    for data_type, estimate in estimates.items():
        weights = weight_format(data_type)
        quantized = source.with_weights(weights)
        dtype = weights.activation_dtype
        expected = layers_that_fit(
            memory * GIGABYTE, quantized.layer_nbytes(dtype), source.kv_bytes_per_token(dtype)
        )
        assert estimate.layers == min(expected, 4) and estimate.total_layers == 4
    assert estimates["bfloat16"].layers == 2
    assert estimates["int4"].layer_bytes < estimates["int8"].layer_bytes < estimates["bfloat16"].layer_bytes
    assert estimates["int8"].layers >= estimates["bfloat16"].layers


@pytest.mark.asyncio
async def test_the_models_page_offers_int8_and_int4_with_the_layers_that_fit(
    store: ModelStore, tmp_path: Path
) -> None:
    assert {"bfloat16", "int8", "int4"} <= set(DATA_TYPES)
    memory = budget_gigabytes(store)
    path = tmp_path / "node.toml"
    async with app_on_page(path, "#--content-tab-tab-models", "#--content-tab-models-layers") as (app, pilot):
        screen = app.screen
        estimate = screen.query_one("#layer-estimate", Static)
        screen.query_one("#layer-model-id", Input).value = "tiny-org/not-installed"
        screen.query_one("#layer-memory", Input).value = str(memory)
        await pilot.pause()
        assert "Install tiny-org/not-installed" in str(estimate.render())
        screen.query_one("#layer-model-id", Input).value = MODEL
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while "of 4 layers" not in str(estimate.render()):
            assert loop.time() < deadline, f"no estimate shown: {estimate.render()}"
            await pilot.pause(0.1)
        shown = str(estimate.render())
        assert "bfloat16: 2 of 4 layers" in shown and "int8:" in shown and "int4:" in shown
        screen.query_one("#layer-dtype", Select).value = "int8"
        await click(pilot, "#layer-add")
        saved = tomllib.loads(path.read_text())["layer_models"][0]
        assert (saved["model_id"], saved["data_type"]) == (MODEL, "int8")
