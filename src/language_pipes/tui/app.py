"""The ``language-pipes`` terminal UI: main menu, then a dashboard of one configuration.

``run_tui`` is what the CLI calls without a subcommand. The app owns one
:class:`NodeControl` (the node it runs) and one log handler feeding the log
panel; on exit it stops the node, so no server outlives the UI.
"""

from __future__ import annotations

import logging
from pathlib import Path

from textual.app import App

from language_pipes.config import ConfigError
from language_pipes.tui.config_document import ConfigDocument
from language_pipes.tui.dashboard import Dashboard
from language_pipes.tui.log_view import UiLogHandler
from language_pipes.tui.menu import MainMenu
from language_pipes.tui.node_control import NodeControl

CSS = """
#menu { align: center middle; width: 100%; height: 100%; }
#menu > Button { width: 40; margin: 1 0 0 0; }
#menu-title { text-style: bold; width: 40; content-align: center middle; }
#menu-subtitle { width: 40; color: $text-muted; }
.dialog {
    width: 70; height: auto; max-height: 90%;
    border: thick $primary; background: $surface; padding: 1 2;
}
ModalScreen { align: center middle; }
.buttons { height: auto; }
.buttons > Button { margin: 0 1 0 0; }
.field { height: auto; }
.field > Input { width: 1fr; }
.label { width: 16; padding: 1 1 0 0; }
.field > Static { padding: 1 0 0 0; }
.section { text-style: bold; margin: 1 0 0 0; color: $accent; }
.short-list { height: auto; max-height: 6; }
.error { color: $error; }
#config-list { height: auto; max-height: 12; }
#tabs { height: 1fr; }
#notice-bar { height: auto; min-height: 1; }
#notice { width: 1fr; padding: 0 1; }
#log { height: 8; border-top: solid $primary; }
#peers, #layer-table, #end-table, #active-table { height: auto; max-height: 12; }
"""


class LanguagePipesApp(App[int]):
    """Configure, run and watch a Language Pipes node."""

    TITLE = "Language Pipes"
    CSS = CSS
    BINDINGS = [("ctrl+q", "quit", "Quit")]

    def __init__(self, config_path: Path | None = None, start: bool = False) -> None:
        super().__init__()
        self.config_path = config_path
        self.start_at_once = start
        self.control = NodeControl()
        self.log_handler = UiLogHandler()

    def on_mount(self) -> None:
        root = logging.getLogger()
        root.addHandler(self.log_handler)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        self.push_screen(MainMenu())
        if self.config_path is not None:
            self.open_config(self.config_path, start=self.start_at_once)

    def open_config(self, path: Path, start: bool = False) -> Dashboard | None:
        """Show the dashboard of the configuration at ``path`` (created when it does not exist)."""
        try:
            document = ConfigDocument(path)
        except ConfigError as error:
            # A file the UI cannot parse: say why and stay on the menu.
            self.notify(str(error), severity="error", timeout=10)
            return None
        dashboard = Dashboard(document, self.control, self.log_handler)
        self.push_screen(dashboard)
        if start:
            self.call_after_refresh(dashboard.start_network, True)
        return dashboard

    async def action_quit(self) -> None:
        await self.control.shutdown()
        logging.getLogger().removeHandler(self.log_handler)
        self.exit(0)


def run_tui(config_path: Path | None, start: bool = False) -> int:
    """Run the terminal UI until the user quits; returns the exit code."""
    result = LanguagePipesApp(config_path, start=start).run()
    return result if isinstance(result, int) else 0
