"""Jobs: the job (API) server's settings and controls, and the requests in flight."""

from __future__ import annotations

import secrets

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Button, DataTable, Input, Label, OptionList, Static, TabbedContent, TabPane

from language_pipes.config_report import shorten_api_key
from language_pipes.tui.status import JobRates, acceptance_label
from language_pipes.tui.tabs.base import DashboardTab, set_input, typed_text

# Keys at least this long show their last characters too, so generated keys can be told apart.
DISTINGUISHABLE_KEY_LENGTH = 16

SCALAR_INPUTS: dict[str, tuple[str, type]] = {
    "job-port": ("job_port", int),
    "max-api-jobs": ("max_api_jobs", int),
    "max-node-jobs": ("max_node_jobs", int),
}


class JobsTab(DashboardTab):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.rates = JobRates()

    def compose(self) -> ComposeResult:
        with TabbedContent(id="jobs-tabs"):
            with TabPane("Server", id="jobs-server"):
                yield Static("", id="job-server-status")
                with Horizontal(classes="buttons"):
                    yield Button("Start job server", id="jobs-start", variant="success")
                    yield Button("Stop job server", id="jobs-stop")
                yield Static("Settings (press Enter in a field to save it)", classes="section")
                with Horizontal(classes="field"):
                    yield Label("Job port", classes="label")
                    yield Input(placeholder="e.g. 8000 (the API's port)", id="job-port")
                with Horizontal(classes="field"):
                    yield Label("Max API jobs", classes="label")
                    yield Input(placeholder="5 (requests in flight per key)", id="max-api-jobs")
                with Horizontal(classes="field"):
                    yield Label("Max node jobs", classes="label")
                    yield Input(placeholder="10 (sequences from other nodes)", id="max-node-jobs")
                yield Static("API keys (none: anyone who reaches the port may use it)", classes="section")
                yield OptionList(id="api-key-list", classes="short-list")
                with Horizontal(classes="field"):
                    yield Input(placeholder="a new key", id="api-key-input", password=True)
                    yield Button("Add", id="api-key-add")
                    yield Button("Generate", id="api-key-generate")
                    yield Button("Delete selected", id="api-key-delete", variant="error")
            with TabPane("Active", id="jobs-active"):
                yield Static("", id="active-summary")
                yield DataTable(id="active-table", cursor_type="row")

    def on_mount(self) -> None:
        self.query_one("#active-table", DataTable).add_columns(
            "Request", "Model", "Prompt tokens", "Prefill", "Tokens so far", "Tokens/s", "Drafts accepted"
        )

    def refresh_view(self) -> None:
        values = self.dashboard.document.values()
        for input_id, (key, _) in SCALAR_INPUTS.items():
            set_input(self.query_one(f"#{input_id}", Input), values.get(key))
        keys = self.query_one("#api-key-list", OptionList)
        keys.clear_options()
        keys.add_options([api_key_label(str(key)) for key in values.get("api_keys", [])])

    def refresh_live(self) -> None:
        control = self.dashboard.control
        status = f"Job server: {control.job_state}"
        if control.api_server is not None:
            status += f" at http://127.0.0.1:{control.api_server.port}/v1"
        self.query_one("#job-server-status", Static).update(status)
        jobs = control.active_jobs()
        self.rates.forget_except(job.sequence_id for job in jobs)
        table = self.query_one("#active-table", DataTable)
        table.clear()
        for job in jobs:
            rate = self.rates.rate(job.sequence_id, job.generated_tokens)
            table.add_row(
                job.sequence_id[:12],
                job.model_id,
                str(job.prompt_tokens),
                f"{job.prefill_fraction:.0%}",
                str(job.generated_tokens),
                "-" if rate is None else f"{rate:.1f}",
                acceptance_label(job.drafted_tokens, job.accepted_tokens),
            )
        self.query_one("#active-summary", Static).update(f"{len(jobs)} request(s) in flight on this node")

    @on(Input.Submitted, "#job-port, #max-api-jobs, #max-node-jobs")
    def save_scalar(self, event: Input.Submitted) -> None:
        key, kind = SCALAR_INPUTS[str(event.input.id)]
        self.dashboard.edit({key: typed_text(event.value, kind)})

    @on(Button.Pressed, "#jobs-start")
    def start(self) -> None:
        self.dashboard.start_job_server()

    @on(Button.Pressed, "#jobs-stop")
    def stop(self) -> None:
        self.dashboard.stop_job_server()

    def _add_key(self, key: str) -> bool:
        keys = list(self.dashboard.document.get("api_keys", []))
        return self.dashboard.edit({"api_keys": [*keys, key]})

    @on(Input.Submitted, "#api-key-input")
    @on(Button.Pressed, "#api-key-add")
    def add_key(self) -> None:
        field = self.query_one("#api-key-input", Input)
        if self._add_key(field.value.strip()):
            field.value = ""

    @on(Button.Pressed, "#api-key-generate")
    def generate_key(self) -> None:
        key = "lp-" + secrets.token_urlsafe(24)
        if self._add_key(key):
            self.dashboard.notify_user(f"New API key (copy it now, it is shown only once): {key}")

    @on(Button.Pressed, "#api-key-delete")
    def delete_key(self) -> None:
        index = self.query_one("#api-key-list", OptionList).highlighted
        keys = list(self.dashboard.document.get("api_keys", []))
        if index is not None and index < len(keys):
            del keys[index]
            self.dashboard.edit({"api_keys": keys or None})


def api_key_label(key: str) -> str:
    """How a key is listed: its first characters, and for long keys its last four (never the whole key)."""
    if len(key) >= DISTINGUISHABLE_KEY_LENGTH:
        return f"{key[:3]}…{key[-4:]}"
    return shorten_api_key(key)
