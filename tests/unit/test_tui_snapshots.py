"""Snapshot tests of the TUI: the main menu and every dashboard tab, compared with committed screenshots.

Each test renders one screen of a configuration with fixed values and no running
node, at a fixed terminal size, with fixed machine numbers and relative paths, and
compares Textual's SVG screenshot (and the plain text read from it, for a readable
diff) with ``tests/unit/snapshots/NAME.svg`` and ``NAME.txt``.

After an intended change of the UI, rewrite the snapshots and review the ``.txt`` diff::

    LP_SNAPSHOT_UPDATE=1 pytest tests/unit/test_tui_snapshots.py
"""

from __future__ import annotations

import difflib
import html
import os
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from textual.pilot import Pilot
from textual.widgets import TabbedContent

from language_pipes.models.store import ModelStore
from language_pipes.tui import status
from language_pipes.tui.app import LanguagePipesApp
from language_pipes.tui.dashboard import Dashboard
from language_pipes.tui.menu import LoadConfigScreen, MainMenu

pytestmark = pytest.mark.asyncio

SNAPSHOT_DIR = Path(__file__).parent / "snapshots"
UPDATE_VARIABLE = "LP_SNAPSHOT_UPDATE"
SIZE = (120, 52)
GIGABYTE = 1_000_000_000
MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"

# Every value fixed; nothing here depends on the machine or the run.
CONFIG_TEXT = f"""\
# The configuration every snapshot shows.
node_id = "office-pc"
network_ip = "192.168.0.20"
peer_port = 5000
network_key = "0123456789abcdef0123456789abcdef"
job_port = 8000
api_keys = ["lp-snapshot-key-number-one", "lp-snapshot-key-number-two"]
max_api_jobs = 4
max_node_jobs = 8
whitelist_node_ids = ["office-pc", "laptop"]
bootstrap_nodes = [{{ address = "192.168.0.10", port = 5000 }}]

[[layer_models]]
model_id = "{MODEL_ID}"
device = "cpu"
memory = 2.5
data_type = "bfloat16"

[[end_models]]
model_id = "{MODEL_ID}"
num_local_layers = 2
device = "cpu"
"""


# -- a fixed machine ----------------------------------------------------------------------------


class FixedPsutil:
    """The three psutil calls the Home tab's resource lines make, with fixed answers."""

    @staticmethod
    def virtual_memory() -> SimpleNamespace:
        return SimpleNamespace(used=6 * GIGABYTE, total=16 * GIGABYTE, available=10 * GIGABYTE)

    @staticmethod
    def cpu_count() -> int:
        return 8

    @staticmethod
    def cpu_percent(interval: float | None = None) -> float:
        return 12.0


class FixedCuda:
    """One GPU with fixed memory, as ``torch.cuda`` reports it."""

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def device_count() -> int:
        return 1

    @staticmethod
    def mem_get_info(index: int) -> tuple[int, int]:
        return 20 * GIGABYTE, 24 * GIGABYTE

    @staticmethod
    def get_device_name(index: int) -> str:
        return "Snapshot GPU"


@pytest.fixture(autouse=True)
def fixed_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Relative app and model folders (so shown paths do not name the tmp dir) and fixed resources."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LP_APP_DIR", "app")
    monkeypatch.setenv("LP_MODEL_DIR", "models")
    monkeypatch.delenv("NO_COLOR", raising=False)  # Textual drops every colour when it is set
    monkeypatch.setattr(status, "psutil", FixedPsutil)
    # ``resource_lines`` looks torch up in ``sys.modules``; give only that lookup a torch with one GPU.
    monkeypatch.setattr(status, "sys", SimpleNamespace(modules={"torch": SimpleNamespace(cuda=FixedCuda)}))
    yield


def write_config() -> Path:
    path = Path("app") / "configs" / "office.toml"
    path.parent.mkdir(parents=True)
    path.write_text(CONFIG_TEXT)
    return path


def install_listed_model() -> None:
    """Files that make the store list the model as installed (nothing here is ever loaded)."""
    folder = ModelStore().local_path(MODEL_ID)
    folder.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        (folder / name).write_text("{}")


# -- snapshot comparison ------------------------------------------------------------------------


def svg_text(svg: str) -> str:
    """The characters of a Rich SVG screenshot, one line per terminal row, trailing blanks dropped."""
    cell = re.search(r'<text [^>]*x="([\d.]+)" [^>]*textLength="([\d.]+)"[^>]*>([^<]+)</text>', svg)
    assert cell is not None, "no text in the screenshot"
    cell_width = float(cell.group(2)) / len(html.unescape(cell.group(3)))
    rows: dict[int, dict[int, str]] = {}
    pattern = r'<text [^>]*x="([\d.]+)"[^>]*clip-path="url\(#terminal-\d+-line-(\d+)\)">([^<]*)</text>'
    for x, row, text in re.findall(pattern, svg):
        column = round(float(x) / cell_width)
        for offset, character in enumerate(html.unescape(text).replace("\n", "")):
            rows.setdefault(int(row), {})[column + offset] = character
    height = max(rows, default=-1) + 1
    lines = []
    for row in range(height):
        cells = rows.get(row, {})
        width = max(cells, default=-1) + 1
        lines.append("".join(cells.get(column, " ") for column in range(width)).replace("\xa0", " ").rstrip())
    return "\n".join(lines) + "\n"


def assert_matches_snapshot(app: LanguagePipesApp, name: str, tmp_path: Path) -> None:
    """Compare the app's screen with the committed snapshot ``name`` (or rewrite it when updating)."""
    svg = app.export_screenshot(title=name)
    text = svg_text(svg)
    svg_path, text_path = SNAPSHOT_DIR / f"{name}.svg", SNAPSHOT_DIR / f"{name}.txt"
    if os.environ.get(UPDATE_VARIABLE) == "1":
        SNAPSHOT_DIR.mkdir(exist_ok=True)
        svg_path.write_text(svg)
        text_path.write_text(text)
        return
    assert svg_path.is_file() and text_path.is_file(), (
        f"no snapshot {name}: run with {UPDATE_VARIABLE}=1 to create it, then review it"
    )
    actual = tmp_path / f"{name}.svg"
    actual.write_text(svg)
    expected_text = text_path.read_text()
    if text != expected_text:
        diff = "".join(
            difflib.unified_diff(
                expected_text.splitlines(keepends=True),
                text.splitlines(keepends=True),
                fromfile=str(text_path),
                tofile="this run",
            )
        )
        pytest.fail(f"{name} differs from its snapshot (this run's screenshot: {actual}):\n{diff}")
    if svg != svg_path.read_text():
        pytest.fail(
            f"{name} has the same text as its snapshot but other colours or styles; "
            f"compare {svg_path} with this run's {actual}, or update with {UPDATE_VARIABLE}=1"
        )


# -- driving the app ----------------------------------------------------------------------------


async def settle(pilot: Pilot[int]) -> None:
    """Let pending refreshes and layout finish before the screenshot."""
    await pilot.pause()
    await pilot.wait_for_scheduled_animations()
    await pilot.pause()


async def show_tab(pilot: Pilot[int], *path: str) -> None:
    """Activate the tab ``path[0]`` of the dashboard, then ``path[1]`` of its inner tabs, and so on."""
    screen = pilot.app.screen
    assert isinstance(screen, Dashboard)
    tabs = screen.query_one("#tabs", TabbedContent)
    for pane_id in path:
        tabs.active = pane_id
        await settle(pilot)
        inner = tabs.get_pane(pane_id).query(TabbedContent)
        if inner:
            tabs = inner.first()
    await settle(pilot)


def dashboard_app() -> LanguagePipesApp:
    app = LanguagePipesApp(write_config())  # what ``language-pipes -c office`` opens
    app.animation_level = "none"
    return app


async def test_main_menu(tmp_path: Path) -> None:
    app = LanguagePipesApp()
    app.animation_level = "none"
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert isinstance(app.screen, MainMenu)
        assert_matches_snapshot(app, "main_menu", tmp_path)


async def test_load_configuration_dialog(tmp_path: Path) -> None:
    write_config()
    app = LanguagePipesApp()
    app.animation_level = "none"
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.click("#load-config")
        await settle(pilot)
        assert isinstance(app.screen, LoadConfigScreen)
        assert_matches_snapshot(app, "load_configuration", tmp_path)


# Snapshot name -> the tabs to open, outermost first.
DASHBOARD_TABS = {
    "home": ("tab-home",),
    "network": ("tab-network",),
    "models_installed": ("tab-models", "models-installed"),
    "models_layer_models": ("tab-models", "models-layers"),
    "models_end_models": ("tab-models", "models-ends"),
    "pipes": ("tab-pipes",),
    "jobs_server": ("tab-jobs", "jobs-server"),
    "jobs_active": ("tab-jobs", "jobs-active"),
}


@pytest.mark.parametrize("name", list(DASHBOARD_TABS))
async def test_dashboard_tab(name: str, tmp_path: Path) -> None:
    install_listed_model()
    app = dashboard_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await show_tab(pilot, *DASHBOARD_TABS[name])
        assert app.control.node is None
        assert_matches_snapshot(app, name, tmp_path)
