"""The dashboard of one configuration: tabs, a notice bar that offers restarts, and the node's log."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Button, Footer, Header, RichLog, Static, TabbedContent, TabPane

from language_pipes.config import ConfigError
from language_pipes.tui.config_document import ConfigDocument, restart_needed_for
from language_pipes.tui.node_control import NodeControl
from language_pipes.tui.tabs.base import DashboardTab
from language_pipes.tui.tabs.home import HomeTab
from language_pipes.tui.tabs.jobs import JobsTab
from language_pipes.tui.tabs.models import ModelsTab
from language_pipes.tui.tabs.network import NetworkTab
from language_pipes.tui.tabs.pipes import PipesTab

if TYPE_CHECKING:
    from language_pipes.tui.log_view import UiLogHandler

LIVE_REFRESH_S = 1.0
LOG_REFRESH_S = 0.3


class Dashboard(Screen[None]):
    """Home, Network, Models, Pipes and Jobs of one configuration and its node."""

    BINDINGS = [("ctrl+b", "main_menu", "Main menu")]

    def __init__(self, document: ConfigDocument, control: NodeControl, log_handler: UiLogHandler) -> None:
        super().__init__()
        self.document = document
        self.control = control
        self.log_handler = log_handler

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(id="tabs"):
            with TabPane("Home", id="tab-home"):
                yield HomeTab()
            with TabPane("Network", id="tab-network"):
                yield NetworkTab()
            with TabPane("Models", id="tab-models"):
                yield ModelsTab()
            with TabPane("Pipes", id="tab-pipes"):
                yield PipesTab()
            with TabPane("Jobs", id="tab-jobs"):
                yield JobsTab()
        with Horizontal(id="notice-bar"):
            yield Static("", id="notice")
            yield Button("Restart network server", id="restart-network", variant="warning")
            yield Button("Restart job server", id="restart-jobs", variant="warning")
        yield RichLog(id="log", max_lines=2000, wrap=True)
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"Language Pipes: {self.document.name}"
        self.query_one("#restart-network").display = False
        self.query_one("#restart-jobs").display = False
        self.refresh_all()
        self.set_interval(LIVE_REFRESH_S, self.refresh_live)
        self.set_interval(LOG_REFRESH_S, self.show_new_log_lines)

    # -- refreshing ---------------------------------------------------------------------------

    def tabs(self) -> list[DashboardTab]:
        return list(self.query(DashboardTab))

    def refresh_all(self) -> None:
        for tab in self.tabs():
            tab.refresh_view()
        self.refresh_live()

    def refresh_live(self) -> None:
        for tab in self.tabs():
            tab.refresh_live()

    def show_new_log_lines(self) -> None:
        view = self.query_one("#log", RichLog)
        for line in self.log_handler.drain():
            view.write(line)

    # -- editing ------------------------------------------------------------------------------

    def edit(self, changes: Mapping[str, Any]) -> bool:
        """Validate and save ``changes``; show the config file's message or what needs a restart."""
        try:
            self.document.update(changes)
        except ConfigError as error:
            # The same one-line message the config file would give; nothing was saved.
            self.notify_user(str(error), error=True)
            return False
        network, jobs = restart_needed_for(set(changes))
        network = network and self.control.network_state == "running"
        jobs = jobs and self.control.job_state == "running" and not network
        message = f"Saved {self.document.path.name}."
        if network and set(changes) == {"layer_models"}:
            message += " Restart the network server to apply it, or use Load now / Unload now."
        elif network:
            message += " Restart the network server to apply it."
        elif jobs:
            message += " Restart the job server to apply it."
        self.notify_user(message)
        self.query_one("#restart-network").display = network
        self.query_one("#restart-jobs").display = jobs
        self.refresh_all()
        return True

    def notify_user(self, message: str, error: bool = False) -> None:
        notice = self.query_one("#notice", Static)
        notice.update(message)
        notice.set_class(error, "error")
        self.query_one("#restart-network").display = False
        self.query_one("#restart-jobs").display = False

    # -- servers ------------------------------------------------------------------------------

    def _config_or_report(self) -> Any:
        try:
            return self.document.config()
        except ConfigError as error:
            # An incomplete configuration cannot start: show what to fix.
            self.notify_user(f"Cannot start: {error}", error=True)
            return None

    def start_network(self, then_job_server: bool = False) -> None:
        config = self._config_or_report()
        if config is None:
            return
        self.notify_user("Starting the network server (loading models can take a while)…")

        async def start() -> None:
            await self.control.start_network(config)
            if then_job_server and self.control.network_state == "running" and config.job_port is not None:
                await self.control.start_job_server(config)
            self.notify_user(
                self.control.last_error or "Network server running.", error=bool(self.control.last_error)
            )
            self.refresh_live()

        self.run_worker(start(), group="servers", exclusive=True)

    def stop_network(self) -> None:
        async def stop() -> None:
            await self.control.stop_network()
            self.notify_user("Network server stopped.")
            self.refresh_live()

        self.run_worker(stop(), group="servers", exclusive=True)

    def start_job_server(self) -> None:
        config = self._config_or_report()
        if config is None:
            return

        async def start() -> None:
            await self.control.start_job_server(config)
            self.notify_user(
                self.control.last_error or "Job server running.", error=bool(self.control.last_error)
            )
            self.refresh_live()

        self.run_worker(start(), group="servers", exclusive=True)

    def stop_job_server(self) -> None:
        async def stop() -> None:
            await self.control.stop_job_server()
            self.notify_user("Job server stopped.")
            self.refresh_live()

        self.run_worker(stop(), group="servers", exclusive=True)

    @on(Button.Pressed, "#restart-network")
    def restart_network(self) -> None:
        config = self._config_or_report()
        if config is None:
            return
        restart_jobs = self.control.job_state == "running"

        async def restart() -> None:
            await self.control.stop_network()
            await self.control.start_network(config)
            if restart_jobs and config.job_port is not None:
                await self.control.start_job_server(config)
            self.notify_user(self.control.last_error or "Restarted.", error=bool(self.control.last_error))
            self.refresh_live()

        self.notify_user("Restarting the network server…")
        self.run_worker(restart(), group="servers", exclusive=True)

    @on(Button.Pressed, "#restart-jobs")
    def restart_jobs(self) -> None:
        self.start_job_server()  # starting a running job server restarts it with the saved settings

    async def action_main_menu(self) -> None:
        await self.control.stop_network()
        self.app.pop_screen()
