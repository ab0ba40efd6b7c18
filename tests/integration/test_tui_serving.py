"""The issue's walk-through, driven headless with Textual's pilot against a real node in the UI's loop.

Create a configuration, set a node id, add the default model as end model and
layer model, start the network, set a job port and an API key on the Jobs
Server page, start the job server; then the real ``openai`` client with the
key gets a chat completion, one without it gets 401, the Active tab shows a
request while it runs and the Pipes tab shows the pipe complete.

With ``LP_TUI_SCREENSHOTS=FOLDER`` set, it also saves an SVG of every tab there
(that is how docs/tui/*.svg are made).
"""

from __future__ import annotations

import asyncio
import os
import threading
import tomllib
from collections.abc import Callable
from pathlib import Path

import openai
import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Select, Static

from language_pipes.tui.app import LanguagePipesApp
from language_pipes.tui.dashboard import Dashboard
from support.node_process import DEFAULT_MODEL, free_port
from support.tui_pilot import click

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]
START_TIMEOUT_S = 420.0
API_KEY = "tui-secret-key"


@pytest.fixture
def tui_environment(tmp_path: Path, model_store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LP_APP_DIR", str(tmp_path / "app"))
    monkeypatch.setenv("LP_MODEL_DIR", str(model_store_dir))
    monkeypatch.setenv("LP_TORCH_THREADS", "1")
    return tmp_path / "app"


async def wait_for(pilot: Pilot[int], condition: Callable[[], bool], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.2)


async def submit(pilot: Pilot[int], dashboard: Dashboard, selector: str, text: str) -> None:
    field = dashboard.query_one(selector, Input)
    field.focus()
    field.value = text
    await pilot.press("enter")
    await pilot.pause()


async def show_tab(pilot: Pilot[int], tab: str) -> None:
    """Click the tab's label, as a person would."""
    assert await pilot.click(f"#--content-tab-{tab}"), f"could not click the tab {tab}"
    await pilot.pause(0.3)


def notice(dashboard: Dashboard) -> str:
    return str(dashboard.query_one("#notice", Static).render())


async def test_a_new_configuration_serves_the_default_model_with_an_api_key(tui_environment: Path) -> None:
    screenshots = os.environ.get("LP_TUI_SCREENSHOTS")
    app = LanguagePipesApp()
    async with app.run_test(size=(130, 48)) as pilot:
        if screenshots:
            app.save_screenshot("menu.svg", path=screenshots)
        await click(pilot, "#new-config")
        app.screen.query_one("#config-name", Input).value = "my-node"
        await click(pilot, "#create")
        dashboard = app.screen
        assert isinstance(dashboard, Dashboard)
        config_path = tui_environment / "configs" / "my-node.toml"
        assert config_path.is_file()

        await show_tab(pilot, "tab-network")
        await submit(pilot, dashboard, "#node-id", "tui-node")
        await submit(pilot, dashboard, "#peer-port", str(free_port()))
        await submit(pilot, dashboard, "#peer-port", "not-a-port")
        assert "peer_port: must be an integer" in notice(dashboard)

        await show_tab(pilot, "tab-models")
        await show_tab(pilot, "models-ends")
        dashboard.query_one("#end-model-id", Input).value = DEFAULT_MODEL
        await click(pilot, "#end-add")
        await show_tab(pilot, "models-layers")
        dashboard.query_one("#layer-model-id", Input).value = DEFAULT_MODEL
        dashboard.query_one("#layer-memory", Input).value = "2"
        assert dashboard.query_one("#layer-dtype", Select).value == "bfloat16"
        await click(pilot, "#layer-add")
        assert dashboard.query_one("#layer-table", DataTable).row_count == 1

        await show_tab(pilot, "tab-home")
        await click(pilot, "#start-network")
        await wait_for(
            pilot,
            lambda: app.control.network_state in ("running", "failed"),
            START_TIMEOUT_S,
            "the network server",
        )
        assert app.control.network_state == "running", app.control.last_error

        await show_tab(pilot, "tab-jobs")
        job_port = free_port()
        await submit(pilot, dashboard, "#job-port", str(job_port))
        await submit(pilot, dashboard, "#api-key-input", API_KEY)
        assert dashboard.query_one("#api-key-list").option_count == 1
        await click(pilot, "#jobs-start")
        await wait_for(pilot, lambda: app.control.job_state in ("running", "failed"), 30, "the job server")
        assert app.control.job_state == "running", app.control.last_error

        saved = tomllib.loads(config_path.read_text())
        assert saved["node_id"] == "tui-node"
        assert saved["job_port"] == job_port
        assert saved["api_keys"] == [API_KEY]
        assert saved["end_models"] == [DEFAULT_MODEL]
        assert saved["layer_models"] == [{"model_id": DEFAULT_MODEL, "memory": 2.0, "data_type": "bfloat16"}]
        assert config_path.read_text().startswith("# Language Pipes node configuration")

        base_url = f"http://127.0.0.1:{job_port}/v1"
        with_key = openai.OpenAI(base_url=base_url, api_key=API_KEY, max_retries=0, timeout=120)
        without_key = openai.OpenAI(base_url=base_url, api_key="wrong-key", max_retries=0, timeout=30)

        # A long request in a thread (the server runs in this loop), watched on the Active tab.
        await show_tab(pilot, "jobs-active")
        results: dict[str, object] = {}

        def long_request() -> None:
            # Greedy on this prompt runs the full 60 tokens (a sampled answer may stop after a few,
            # before the table refreshes), so the request is still active while the test looks.
            results["long"] = with_key.chat.completions.create(
                model=DEFAULT_MODEL,
                messages=[{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
                max_tokens=60,
                temperature=0,
            )

        worker = threading.Thread(target=long_request)
        worker.start()
        active = dashboard.query_one("#active-table", DataTable)
        await wait_for(pilot, lambda: active.row_count >= 1, 60, "a row in the Active tab")
        assert DEFAULT_MODEL in str(active.get_row_at(0))
        if screenshots:
            await pilot.pause(1.5)
            app.save_screenshot("jobs-active.svg", path=screenshots)
        await wait_for(pilot, lambda: not worker.is_alive(), 120, "the long request")
        long_answer = results["long"]
        assert isinstance(long_answer, openai.types.chat.ChatCompletion)
        assert long_answer.usage is not None and long_answer.usage.completion_tokens == 60

        answer = await asyncio.to_thread(
            with_key.chat.completions.create,
            model=DEFAULT_MODEL,
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=8,
        )
        assert answer.choices[0].message.content
        with pytest.raises(openai.AuthenticationError):
            await asyncio.to_thread(
                without_key.chat.completions.create,
                model=DEFAULT_MODEL,
                messages=[{"role": "user", "content": "Say hello."}],
                max_tokens=8,
            )

        await show_tab(pilot, "tab-pipes")
        await pilot.pause(1.2)
        pipes = dashboard.query_one("#pipes", Static)
        rendered = app.export_screenshot()
        assert "complete" in rendered and "tui-node" in rendered, pipes
        await show_tab(pilot, "tab-home")
        await pilot.pause(1.2)
        home = str(dashboard.query_one("#missing", Static).render())
        assert "Nothing: this node is serving." in home

        if screenshots:
            for tab in ("home", "network", "models", "pipes", "jobs"):
                await show_tab(pilot, f"tab-{tab}")
                if tab == "jobs":
                    await show_tab(pilot, "jobs-server")
                await pilot.pause(1.2)
                app.save_screenshot(f"{tab}.svg", path=screenshots)

        await app.action_quit()
    assert app.control.node is None and app.control.api_server is None
    logs = list((tui_environment / "logs").glob("tui-node-*.log"))
    assert logs and "job server" in logs[0].read_text()
