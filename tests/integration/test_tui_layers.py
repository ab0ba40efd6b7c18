"""Load now / Unload now of the Layer Models tab, against real nodes in the test's loop.

The first test drives the TUI: unloading the only layers of the default model
breaks its pipe (the API answers 503), loading them again serves requests.
The second checks what Unload now relies on: a node that unloads its layers
while a request streams through them lets the origin move that request to
another node's copy, and the request finishes normally.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import openai
import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from language_pipes.config import NodeConfig
from language_pipes.models.store import ModelStore
from language_pipes.node import Node
from language_pipes.tui.app import LanguagePipesApp
from language_pipes.vocabulary import ModelId
from support.node_process import DEFAULT_MODEL, free_port
from support.tui_pilot import click

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]
START_TIMEOUT_S = 420.0
HOSTED_COLUMN = 4


@pytest.fixture
def environment(tmp_path: Path, model_store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LP_APP_DIR", str(tmp_path / "app"))
    monkeypatch.setenv("LP_MODEL_DIR", str(model_store_dir))
    monkeypatch.setenv("LP_TORCH_THREADS", "1")
    return tmp_path


async def wait_for(pilot: Pilot[int], condition: Callable[[], bool], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.2)


def notice(app: LanguagePipesApp) -> str:
    return str(app.screen.query_one("#notice", Static).render())


async def ask(client: openai.OpenAI) -> str | None:
    answer = await asyncio.to_thread(
        client.chat.completions.create,
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=4,
    )
    return answer.choices[0].message.content


async def test_unload_now_breaks_the_pipe_and_load_now_serves_again(environment: Path) -> None:
    job_port = free_port()
    config = environment / "layers.toml"
    config.write_text(
        f'node_id = "tui-layers"\npeer_port = {free_port()}\njob_port = {job_port}\n'
        f'end_models = ["{DEFAULT_MODEL}"]\n\n'
        f'[[layer_models]]\nmodel_id = "{DEFAULT_MODEL}"\nmemory = 2\n'
    )
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{job_port}/v1", api_key="-", max_retries=0, timeout=60)
    app = LanguagePipesApp(config, start=True)
    async with app.run_test(size=(130, 48)) as pilot:
        await wait_for(
            pilot, lambda: app.control.job_state in ("running", "failed"), START_TIMEOUT_S, "the servers"
        )
        assert app.control.job_state == "running", app.control.last_error
        await click(pilot, "#--content-tab-tab-models")
        await click(pilot, "#--content-tab-models-layers")
        table = app.screen.query_one("#layer-table", DataTable)
        await wait_for(
            pilot, lambda: table.get_row_at(0)[HOSTED_COLUMN] == "layers 1-29", 5, "the hosted layers"
        )
        assert await ask(client)

        await click(pilot, "#layer-unload")
        await wait_for(pilot, lambda: notice(app).startswith("Unloaded"), 60, "the unload")
        assert notice(app) == f"Unloaded layers 1-29 of {DEFAULT_MODEL}."
        assert app.control.node is not None and not app.control.node.worker.segments
        await wait_for(pilot, lambda: table.get_row_at(0)[HOSTED_COLUMN] == "none", 5, "the table to follow")
        with pytest.raises(openai.APIStatusError) as refused:
            await ask(client)
        assert refused.value.status_code == 503
        await click(pilot, "#--content-tab-tab-home")
        await pilot.pause(1.2)
        assert f"no complete pipe for model {DEFAULT_MODEL}" in str(app.screen.query_one("#missing").render())

        await click(pilot, "#--content-tab-tab-models")
        await click(pilot, "#layer-load")
        await wait_for(pilot, lambda: notice(app).startswith(("Loaded", "loading")), 120, "the load")
        assert notice(app) == f"Loaded layers 1-29 of {DEFAULT_MODEL}."
        assert await ask(client)
        await click(pilot, "#layer-load")  # loaded already: a second press would only add a copy
        assert notice(app) == f"this node already hosts layers 1-29 of {DEFAULT_MODEL}; unload them first"
        await app.action_quit()
    assert app.control.node is None


def _config(node_id: str, **values: object) -> NodeConfig:
    return NodeConfig.model_validate(
        {"node_id": node_id, "peer_port": free_port(), "torch_threads": 1, **values}
    )


async def test_unloading_layers_under_a_stream_moves_it_to_another_copy(
    environment: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="language_pipes.engine.scheduler")
    ModelStore().ensure(DEFAULT_MODEL)
    job_port = free_port()
    origin = Node(_config("origin", job_port=job_port, end_models=[DEFAULT_MODEL]))
    await origin.start()
    bootstrap = [{"address": "127.0.0.1", "port": origin.config.peer_port}]
    layer_model = [{"model_id": DEFAULT_MODEL, "memory": 2}]
    copies = [
        Node(_config(name, bootstrap_nodes=bootstrap, layer_models=layer_model)) for name in ("l1", "l2")
    ]
    try:
        for node in copies:
            await node.start()
        model = ModelId(DEFAULT_MODEL)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while origin.route_for(model) is None:
            assert loop.time() < deadline, "no route through the layer nodes"
            await asyncio.sleep(0.2)

        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{job_port}/v1", api_key="-", max_retries=0, timeout=300
        )
        streamed: list[str] = []
        finish: list[str | None] = []
        failures: list[BaseException] = []

        def stream() -> None:
            try:
                read_stream()
            except BaseException as error:  # noqa: BLE001 - handed to the test thread, which asserts on it
                failures.append(error)

        def read_stream() -> None:
            chunks = client.chat.completions.create(
                model=DEFAULT_MODEL,
                # Greedy here runs past 80 tokens, so the stream is still going when a layer node unloads.
                messages=[{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
                max_tokens=80,
                temperature=0,
                stream=True,
            )
            for chunk in chunks:
                if chunk.choices:
                    streamed.append(chunk.choices[0].delta.content or "")
                    if chunk.choices[0].finish_reason:
                        finish.append(chunk.choices[0].finish_reason)

        reader = threading.Thread(target=stream)
        reader.start()
        deadline = loop.time() + 120
        busy: Node | None = None
        while busy is None:
            assert loop.time() < deadline and reader.is_alive(), "the stream never reached a layer node"
            busy = next((node for node in copies if node.worker.sequence_count), None)
            await asyncio.sleep(0.05)
        tokens_before = len(streamed)

        await asyncio.wait_for(busy.unload_layer_model(DEFAULT_MODEL), 60)
        assert not busy.worker.segments and busy.worker.sequence_count == 0
        other = next(node for node in copies if node is not busy)

        await asyncio.to_thread(reader.join, 300)
        assert not reader.is_alive()
        assert failures == [] and finish in (["stop"], ["length"]), (failures, finish)
        assert f"on Route({other.node_id}[1:30]" in caplog.text, "the origin replayed it on the other copy"
        assert len(streamed) > tokens_before
        assert other.worker.segments  # the copy that took the request over still hosts its layers
    finally:
        for node in [*copies, origin]:
            await node.stop()
