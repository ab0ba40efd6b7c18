"""Home: start and stop the servers, machine resources, what runs, what is missing."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Button, Static

from language_pipes.tui.status import missing_before_serving, resource_lines
from language_pipes.tui.tabs.base import DashboardTab


class HomeTab(DashboardTab):
    def compose(self) -> ComposeResult:
        yield Static("Servers", classes="section")
        with Horizontal(classes="buttons"):
            yield Button("Start network server", id="start-network", variant="success")
            yield Button("Stop network server", id="stop-network")
            yield Button("Start job server", id="start-jobs", variant="success")
            yield Button("Stop job server", id="stop-jobs")
        yield Static("", id="running")
        yield Static("Before this node can serve", classes="section")
        yield Static("", id="missing")
        yield Static("Machine", classes="section")
        yield Static("", id="resources")

    @on(Button.Pressed, "#start-network")
    def start_network(self) -> None:
        self.dashboard.start_network()

    @on(Button.Pressed, "#stop-network")
    def stop_network(self) -> None:
        self.dashboard.stop_network()

    @on(Button.Pressed, "#start-jobs")
    def start_jobs(self) -> None:
        self.dashboard.start_job_server()

    @on(Button.Pressed, "#stop-jobs")
    def stop_jobs(self) -> None:
        self.dashboard.stop_job_server()

    def refresh_live(self) -> None:
        control = self.dashboard.control
        document = self.dashboard.document
        values = document.values()
        lines = [
            f"Configuration: {document.path}",
            f"Network server: {control.network_state}"
            + (f" (peer port {values.get('peer_port', 5000)})" if control.network_state == "running" else ""),
            f"Job server: {control.job_state}"
            + (f" (http://127.0.0.1:{control.api_server.port}/v1)" if control.api_server else ""),
        ]
        status = control.status()
        incomplete: list[str] = []
        for model in status.models if status is not None else ():
            layers = ", ".join(f"{start}-{end - 1}" for start, end in model.segments) or "none"
            end_model = "end model" if model.has_end_model else "layers only"
            state = "serving" if model.servable else "not servable yet"
            lines.append(f"  {model.model_id}: {end_model}, layers {layers}; {state}")
            if model.has_end_model and not model.servable:
                incomplete.append(model.model_id)
        if control.last_error:
            lines.append(f"Last error: {control.last_error}")
        if control.log_file is not None:
            lines.append(f"Log file: {control.log_file}")
        self.query_one("#running", Static).update("\n".join(lines))
        missing = missing_before_serving(
            document.problems(),
            values,
            network_running=control.network_state == "running",
            job_server_running=control.job_state == "running",
            incomplete_models=incomplete,
        )
        text = "\n".join(f"• {line}" for line in missing) or "Nothing: this node is serving."
        self.query_one("#missing", Static).update(text)
        self.query_one("#resources", Static).update("\n".join(resource_lines()))
