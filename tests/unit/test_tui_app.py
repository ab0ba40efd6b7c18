"""The TUI without a running node, driven by Textual's pilot: menu, dialogs, tabs and edits."""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from test_store import TINY_REPO, UNWANTED_FILES, FakeHub, FakeRepo, _build_tiny_model_files
from textual.pilot import Pilot
from textual.widgets import Button, DataTable, Input, OptionList, ProgressBar, Static

from language_pipes.tui.app import LanguagePipesApp
from language_pipes.tui.config_document import create_config, saved_config_names
from language_pipes.tui.dashboard import Dashboard
from language_pipes.tui.menu import LoadConfigScreen, MainMenu
from support.node_process import free_port
from support.tui_pilot import SIZE, app_on_page, click

pytestmark = pytest.mark.asyncio

# Key widgets each tab must render.
TAB_WIDGETS = {
    "tab-home": ["#start-network", "#stop-network", "#start-jobs", "#stop-jobs", "#missing", "#resources"],
    "tab-network": [
        "#peers",
        "#node-id",
        "#network-ip",
        "#peer-port",
        "#network-key-generate",
        "#bootstrap-list",
    ],
    "tab-models": ["#installed-list", "#install", "#delete-model"],
    "tab-pipes": ["#pipes"],
    "tab-jobs": ["#job-port", "#api-key-list", "#api-key-generate", "#jobs-start", "#max-api-jobs"],
}


@pytest.fixture(autouse=True)
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LP_APP_DIR", str(tmp_path / "app"))
    monkeypatch.setenv("LP_MODEL_DIR", str(tmp_path / "models"))
    return tmp_path / "app"


async def submit(pilot: Pilot[int], selector: str, text: str) -> None:
    field = pilot.app.screen.query_one(selector, Input)
    field.focus()
    field.value = text
    await pilot.press("enter")
    await pilot.pause()


def notice(app: LanguagePipesApp) -> str:
    return str(app.screen.query_one("#notice", Static).render())


async def test_new_configuration_asks_a_name_and_opens_its_dashboard(app_dir: Path) -> None:
    app = LanguagePipesApp()
    async with app.run_test(size=SIZE) as pilot:
        assert isinstance(app.screen, MainMenu)
        await click(pilot, "#new-config")
        await submit(pilot, "#config-name", "bad name")
        assert "configuration name" in str(app.screen.query_one("#new-config-error", Static).render())
        await submit(pilot, "#config-name", "office")
        assert isinstance(app.screen, Dashboard)
        assert (app_dir / "configs" / "office.toml").is_file()
        await pilot.pause(1.2)
        assert "set a node id" in str(app.screen.query_one("#missing", Static).render())


async def test_load_configuration_opens_or_deletes_a_saved_one() -> None:
    create_config("first")
    create_config("second")
    app = LanguagePipesApp()
    async with app.run_test(size=SIZE) as pilot:
        await click(pilot, "#load-config")
        assert isinstance(app.screen, LoadConfigScreen)
        assert app.screen.query_one("#config-list", OptionList).option_count == 2
        await click(pilot, "#delete")
        await click(pilot, "#yes")
        assert saved_config_names() == ["second"]
        await click(pilot, "#open")
        assert isinstance(app.screen, Dashboard)
        assert app.screen.document.name == "second"


async def test_each_tab_renders_its_key_widgets(tmp_path: Path) -> None:
    path = tmp_path / "direct.toml"
    path.write_text('node_id = "direct"\n')
    app = LanguagePipesApp(path)  # what -c does
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, Dashboard)
        for tab, selectors in TAB_WIDGETS.items():
            await click(pilot, f"#--content-tab-{tab}")
            for selector in selectors:
                assert app.screen.query_one(selector).region.area > 0, f"{selector} not shown on {tab}"
        assert "Start the network server" in str(app.screen.query_one("#pipes", Static).render())
        await click(pilot, "#--content-tab-tab-network")
        assert app.screen.query_one("#node-id", Input).value == "direct"


async def test_edits_are_validated_saved_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('# keep me\nnode_id = "n"\n')
    app = LanguagePipesApp(path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await click(pilot, "#--content-tab-tab-jobs")
        await submit(pilot, "#job-port", "0")
        assert notice(app) == "node.toml: job_port: must be between 1 and 65535 (got 0)"
        assert app.screen.query_one("#notice").has_class("error")
        await submit(pilot, "#job-port", "8123")
        assert notice(app) == "Saved node.toml."
        await click(pilot, "#api-key-generate")
        generated = tomllib.loads(path.read_text())["api_keys"][0]
        assert generated in notice(app)
        await submit(pilot, "#api-key-input", "second-key")
        keys = app.screen.query_one("#api-key-list", OptionList)
        assert keys.option_count == 2
        assert "second-key" not in str(keys.get_option_at_index(1).prompt)  # shown shortened
        keys.highlighted = 0
        await click(pilot, "#api-key-delete")
        assert tomllib.loads(path.read_text())["api_keys"] == ["second-key"]
        assert path.read_text().startswith("# keep me\n")


async def test_the_network_key_can_be_generated_shown_and_removed_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    async with app_on_page(path, "#--content-tab-tab-network") as (app, pilot):
        await click(pilot, "#network-key-generate")
        key = tomllib.loads(path.read_text())["network_key"]
        assert len(key) == 32
        shown = app.screen.query_one("#network-key", Static)
        assert key not in str(shown.render())
        await click(pilot, "#network-key-show")
        assert key in str(shown.render())
        await click(pilot, "#network-key-remove")
        assert "may join" in str(app.screen.query_one("#question", Static).render())
        await click(pilot, "#yes")
        assert "network_key" not in tomllib.loads(path.read_text())
        await pilot.pause()
        assert "can join" in str(app.screen.query_one("#network-key", Static).render())


async def test_layer_models_are_added_replaced_and_removed(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    async with app_on_page(path, "#--content-tab-tab-models", "#--content-tab-models-layers") as (app, pilot):
        screen = app.screen
        screen.query_one("#layer-model-id", Input).value = "org/model"
        screen.query_one("#layer-memory", Input).value = "-3"
        await click(pilot, "#layer-add")
        assert "layer_models[0].memory: must be greater than 0" in notice(app)
        screen.query_one("#layer-memory", Input).value = "1.5"
        await click(pilot, "#layer-add")
        screen.query_one("#layer-device", Input).value = "cuda:0"
        await click(pilot, "#layer-update")
        table = screen.query_one("#layer-table", DataTable)
        assert table.row_count == 1 and table.get_row_at(0)[1] == "cuda:0"
        assert tomllib.loads(path.read_text())["layer_models"][0]["device"] == "cuda:0"
        await click(pilot, "#layer-remove")
        assert "layer_models" not in tomllib.loads(path.read_text())


async def test_starting_an_incomplete_configuration_says_what_to_fix(app_dir: Path) -> None:
    app = LanguagePipesApp(create_config("empty"))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await click(pilot, "#start-network")
        assert notice(app) == "Cannot start: empty.toml: node_id: required key is missing"
        assert app.control.node is None
        assert isinstance(app.screen.query_one("#start-jobs", Button), Button)


async def test_start_at_once_tries_to_start_the_opened_configuration(app_dir: Path) -> None:
    app = LanguagePipesApp(create_config("empty"), start=True)  # what -c empty --start does
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.3)
        assert notice(app) == "Cannot start: empty.toml: node_id: required key is missing"


async def wait_for(pilot: Pilot[int], condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.1)


async def test_install_shows_how_far_the_download_has_got(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _build_tiny_model_files(tmp_path / "tiny")
    expected = sum(len(data) for name, data in files.items() if name not in UNWANTED_FILES)
    path = tmp_path / "node.toml"
    path.write_text('node_id = "n"\n')
    with FakeHub({TINY_REPO: FakeRepo(files)}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        app = LanguagePipesApp(path)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            await click(pilot, "#--content-tab-tab-models")
            await submit(pilot, "#install-id", TINY_REPO)
            status = app.screen.query_one("#install-status", Static)
            bar = app.screen.query_one("#install-progress", ProgressBar)
            await wait_for(pilot, lambda: str(status.render()).startswith("Installed"), "the install")
            await wait_for(pilot, lambda: bar.progress == expected, f"the bar at {expected} bytes")
            assert bar.total == expected
            installed = app.screen.query_one("#installed-list", OptionList)
            assert str(installed.get_option_at_index(0).prompt) == TINY_REPO


async def test_changing_max_api_jobs_offers_a_job_server_restart_that_applies_it(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(f'node_id = "n"\npeer_port = {free_port()}\njob_port = {free_port()}\nmax_api_jobs = 2\n')
    app = LanguagePipesApp(path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await click(pilot, "#start-network")  # a node with no models: quick, and real
        await wait_for(pilot, lambda: app.control.network_state == "running", "the network server")
        await click(pilot, "#--content-tab-tab-jobs")
        await click(pilot, "#jobs-start")
        await wait_for(pilot, lambda: app.control.job_state == "running", "the job server")
        first = app.control.api_server
        assert first is not None and first.app.state.job_limiter.max_jobs == 2
        restart = app.screen.query_one("#restart-jobs", Button)
        assert not restart.display

        await submit(pilot, "#max-api-jobs", "7")
        assert notice(app) == "Saved node.toml. Restart the job server to apply it."
        assert restart.display and not app.screen.query_one("#restart-network", Button).display
        await click(pilot, "#restart-jobs")
        await wait_for(pilot, lambda: app.control.api_server not in (None, first), "the restart")
        assert app.control.api_server is not None
        assert app.control.api_server.app.state.job_limiter.max_jobs == 7
        assert tomllib.loads(path.read_text())["max_api_jobs"] == 7
        await app.control.stop_network()


async def test_load_and_unload_now_need_the_network_server(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('node_id = "n"\n\n[[layer_models]]\nmodel_id = "org/model"\nmemory = 1\n')
    app = LanguagePipesApp(path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await click(pilot, "#--content-tab-tab-models")
        await click(pilot, "#--content-tab-models-layers")
        table = app.screen.query_one("#layer-table", DataTable)
        assert table.get_row_at(0)[4] == "-"
        for button in ("#layer-load", "#layer-unload"):
            await click(pilot, button)
            await pilot.pause(0.2)
            assert notice(app) == "start the network server first (it loads the configured layer models)"
            assert app.screen.query_one("#notice").has_class("error")
