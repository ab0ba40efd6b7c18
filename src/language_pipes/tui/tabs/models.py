"""Models: installed model folders, and the layer and end models this node hosts.

The Layer Models page offers every data type (int8 / int4 quantize the
layers' weights) and, for an installed model and a memory budget, shows how
many layers fit in bfloat16, int8 and int4 (tui/layer_estimate.py).
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from pydantic import ValidationError
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.coordinate import Coordinate
from textual.message import Message
from textual.widgets import (
    Button,
    DataTable,
    Input,
    OptionList,
    ProgressBar,
    Select,
    Static,
    TabbedContent,
    TabPane,
)

from language_pipes.config import LayerModelConfig, describe_one_error
from language_pipes.models.store import ModelStore, ModelStoreError
from language_pipes.tui.layer_estimate import describe_estimates, estimate_layers
from language_pipes.tui.node_control import LayerChangeError, describe_layers
from language_pipes.tui.tabs.base import DashboardTab, typed_text

DATA_TYPES = ("bfloat16", "int8", "int4", "float16", "float32")
HOSTED_COLUMN = 4
MEGABYTE = 1_000_000


class InstallProgress(Message):
    """Bytes of a model download so far (posted from the download threads)."""

    def __init__(self, done: int, total: int | None) -> None:
        super().__init__()
        self.done = done
        self.total = total


class ModelsTab(DashboardTab):
    _install_message = ""

    def compose(self) -> ComposeResult:
        with TabbedContent(id="models-tabs"):
            with TabPane("Installed", id="models-installed"):
                yield Static("", id="model-dir")
                yield OptionList(id="installed-list", classes="short-list")
                with Horizontal(classes="field"):
                    yield Input(placeholder="Hugging Face id, e.g. Qwen/Qwen3-1.7B", id="install-id")
                    yield Button("Install", id="install", variant="primary")
                    yield Button("Delete selected", id="delete-model", variant="error")
                yield ProgressBar(id="install-progress", show_eta=False)
                yield Static("", id="install-status")
            with TabPane("Layer Models", id="models-layers"):
                yield Static("Decoder layers this node hosts for the network (as many as fit memory).")
                yield DataTable(id="layer-table", cursor_type="row")
                yield Static("", id="weight-fetches")
                with Horizontal(classes="field"):
                    yield Input(placeholder="model id", id="layer-model-id")
                    yield Input(placeholder="device (cpu)", id="layer-device")
                    yield Input(placeholder="memory GB", id="layer-memory")
                    yield Select(
                        [(name, name) for name in DATA_TYPES],
                        value="bfloat16",
                        allow_blank=False,
                        id="layer-dtype",
                    )
                yield Static("", id="layer-estimate")
                with Horizontal(classes="buttons"):
                    yield Button("Add", id="layer-add", variant="primary")
                    yield Button("Replace selected", id="layer-update")
                    yield Button("Remove selected", id="layer-remove", variant="error")
                with Horizontal(classes="buttons"):
                    yield Button("Load now", id="layer-load", variant="success")
                    yield Button("Unload now", id="layer-unload")
            with TabPane("End Models", id="models-ends"):
                yield Static(
                    "Models this node serves through its API (tokenizer, embedding, head, first layers)."
                )
                yield DataTable(id="end-table", cursor_type="row")
                with Horizontal(classes="field"):
                    yield Input(placeholder="model id", id="end-model-id")
                    yield Input(placeholder="local layers (1)", id="end-local-layers")
                    yield Input(placeholder="device (cpu)", id="end-device")
                with Horizontal(classes="buttons"):
                    yield Button("Add", id="end-add", variant="primary")
                    yield Button("Replace selected", id="end-update")
                    yield Button("Remove selected", id="end-remove", variant="error")

    def on_mount(self) -> None:
        self.query_one("#layer-table", DataTable).add_columns(
            "Model", "Device", "Memory GB", "Data type", "Hosted now"
        )
        self.query_one("#end-table", DataTable).add_columns("Model", "Local layers", "Device")
        self.query_one("#install-progress", ProgressBar).display = False
        self.query_one("#weight-fetches", Static).display = False
        self.refresh_installed()
        self.update_estimate()

    # -- installed ----------------------------------------------------------------------------

    def refresh_installed(self) -> None:
        store = ModelStore()
        self.query_one("#model-dir", Static).update(f"Model folder: {store.root}")
        listing = self.query_one("#installed-list", OptionList)
        listing.clear_options()
        listing.add_options(list(store.installed()) or ["(none installed yet)"])

    @on(Input.Submitted, "#install-id")
    @on(Button.Pressed, "#install")
    def install(self) -> None:
        model_id = self.query_one("#install-id", Input).value.strip()
        if model_id:
            self.install_model(model_id)

    @work(thread=True, exclusive=True, group="install")
    def install_model(self, model_id: str) -> None:
        """Download or convert a model in a thread; the bar follows the download's bytes."""
        self.app.call_from_thread(self._show_install, f"Installing {model_id}…", True)
        try:
            path = ModelStore().ensure(
                model_id, progress=lambda done, total: self.post_message(InstallProgress(done, total))
            )
        except ModelStoreError as error:
            # Unknown id, no connection, gated model: the store's one-line reason.
            self.app.call_from_thread(self._show_install, str(error), False)
            return
        self.app.call_from_thread(self._show_install, f"Installed {model_id} at {path}", False)

    def _show_install(self, message: str, running: bool) -> None:
        bar = self.query_one("#install-progress", ProgressBar)
        if running:
            bar.update(total=None, progress=0)  # pulses until the first bytes arrive (or while converting)
        bar.display = running
        self._install_message = message
        self.query_one("#install-status", Static).update(message)
        if not running:
            self.refresh_installed()

    @on(InstallProgress)
    def show_install_progress(self, event: InstallProgress) -> None:
        self.query_one("#install-progress", ProgressBar).update(total=event.total, progress=event.done)
        expected = f" of {event.total / MEGABYTE:.1f}" if event.total else ""
        self.query_one("#install-status", Static).update(
            f"{self._install_message} ({event.done / MEGABYTE:.1f}{expected} MB)"
        )

    @on(Button.Pressed, "#delete-model")
    def delete_model(self) -> None:
        listing = self.query_one("#installed-list", OptionList)
        if listing.highlighted is None:
            return
        model_id = str(listing.get_option_at_index(listing.highlighted).prompt)
        if model_id.startswith("("):
            return
        try:
            ModelStore().delete(model_id)
        except ModelStoreError as error:
            # A name the store rejects: report it.
            self.query_one("#install-status", Static).update(str(error))
            return
        self.query_one("#install-status", Static).update(f"Deleted {model_id}")
        self.refresh_installed()

    # -- layer and end models -------------------------------------------------------------------

    def refresh_view(self) -> None:
        values = self.dashboard.document.values()
        layers = self.query_one("#layer-table", DataTable)
        layers.clear()
        for entry in values.get("layer_models", []):
            layers.add_row(
                str(entry.get("model_id")),
                str(entry.get("device", "cpu")),
                str(entry.get("memory")),
                str(entry.get("data_type", "bfloat16")),
                self._hosted_now(str(entry.get("model_id"))),
            )
        ends = self.query_one("#end-table", DataTable)
        ends.clear()
        for entry in values.get("end_models", []):
            entry = {"model_id": entry} if isinstance(entry, str) else entry
            ends.add_row(
                str(entry.get("model_id")),
                str(entry.get("num_local_layers", 1)),
                str(entry.get("device", "cpu")),
            )

    def refresh_live(self) -> None:
        fetches = self.dashboard.control.weight_fetches()
        fetch_lines = self.query_one("#weight-fetches", Static)
        fetch_lines.display = bool(fetches)  # shown only on a node that fetched weights from peers
        fetch_lines.update("\n".join(f"Weights from peers: {line}" for line in fetches))
        table = self.query_one("#layer-table", DataTable)
        for row, entry in enumerate(self.dashboard.document.get("layer_models", [])):
            if row < table.row_count:
                table.update_cell_at(
                    Coordinate(row, HOSTED_COLUMN), self._hosted_now(str(entry.get("model_id")))
                )

    def _hosted_now(self, model_id: str) -> str:
        control = self.dashboard.control
        if control.layer_change is not None and control.layer_change[1] == model_id:
            return f"{control.layer_change[0]}…"
        if control.network_state != "running":
            return "-"
        spans = control.hosted_layers(model_id)
        return describe_layers(spans) if spans else "none"

    def _selected_layer_model(self) -> LayerModelConfig | None:
        entries = list(self.dashboard.document.get("layer_models", []))
        row = self.query_one("#layer-table", DataTable).cursor_row
        if not entries or not 0 <= row < len(entries):
            self.dashboard.notify_user("Select a row first.", error=True)
            return None
        try:
            return LayerModelConfig.model_validate(entries[row])
        except ValidationError as error:
            # A hand-edited entry that does not validate: say what is wrong with it.
            problem = describe_one_error(error.errors(include_url=False)[0])
            self.dashboard.notify_user(f"layer_models[{row}]: {problem}", error=True)
            return None

    @on(Button.Pressed, "#layer-load")
    def load_layer_now(self) -> None:
        entry = self._selected_layer_model()
        if entry is not None:
            self.dashboard.notify_user(f"Loading layers of {entry.model_id}…")
            self._change_layers(self.dashboard.control.load_layer_model(entry))

    @on(Button.Pressed, "#layer-unload")
    def unload_layer_now(self) -> None:
        entry = self._selected_layer_model()
        if entry is not None:
            self.dashboard.notify_user(f"Unloading layers of {entry.model_id} (requests on them move first)…")
            self._change_layers(self.dashboard.control.unload_layer_model(entry.model_id))

    def _change_layers(self, change: Coroutine[Any, Any, str]) -> None:
        async def run() -> None:
            try:
                message = await change
            except LayerChangeError as error:
                # Network not running, another change going on, or the load failed: say so.
                self.dashboard.notify_user(str(error), error=True)
            else:
                self.dashboard.notify_user(message)
            self.dashboard.refresh_live()

        self.run_worker(run(), group="layers")
        self.refresh_live()

    @on(Input.Changed, "#layer-model-id, #layer-memory")
    def layer_inputs_changed(self) -> None:
        self.update_estimate()

    def update_estimate(self) -> None:
        """Show how many layers of the typed model fit the typed memory, per data type."""
        shown = self.query_one("#layer-estimate", Static)
        model_id = self.query_one("#layer-model-id", Input).value.strip()
        memory = typed_text(self.query_one("#layer-memory", Input).value, float)
        if not model_id or not isinstance(memory, float) or memory <= 0:
            shown.update("Type an installed model id and a memory budget to see how many layers fit.")
            return
        store = ModelStore()
        try:
            installed = store.is_installed(model_id)
        except ModelStoreError:
            # Not a valid model id (yet): nothing to estimate.
            installed = False
        if not installed:
            shown.update(f"Install {model_id} to see how many of its layers fit.")
            return
        shown.update("Estimating…")
        self._estimate(store, model_id, memory)

    @work(thread=True, exclusive=True, group="estimate")
    def _estimate(self, store: ModelStore, model_id: str, memory: float) -> None:
        try:
            text = describe_estimates(memory, estimate_layers(store.local_path(model_id), memory))
        except Exception as error:  # noqa: BLE001 - an unreadable or unsupported model: say so on the page
            text = f"No estimate for {model_id}: {error}"
        self.app.call_from_thread(self.query_one("#layer-estimate", Static).update, text)

    def _layer_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "model_id": self.query_one("#layer-model-id", Input).value.strip(),
            "memory": typed_text(self.query_one("#layer-memory", Input).value, float),
            "data_type": self.query_one("#layer-dtype", Select).value,
        }
        device = self.query_one("#layer-device", Input).value.strip()
        if device:
            entry["device"] = device
        return {key: value for key, value in entry.items() if value is not None}

    def _end_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"model_id": self.query_one("#end-model-id", Input).value.strip()}
        local = typed_text(self.query_one("#end-local-layers", Input).value, int)
        device = self.query_one("#end-device", Input).value.strip()
        if local is not None:
            entry["num_local_layers"] = local
        if device:
            entry["device"] = device
        return entry

    def _edit_list(self, key: str, table_id: str, entry: dict[str, Any] | None, replace: bool) -> None:
        entries = list(self.dashboard.document.get(key, []))
        row = self.query_one(table_id, DataTable).cursor_row
        selected = row if entries and 0 <= row < len(entries) else None
        if entry is None or replace:
            if selected is None:
                self.dashboard.notify_user("Select a row first.", error=True)
                return
            if entry is None:
                del entries[selected]
            else:
                entries[selected] = entry
        else:
            entries.append(entry)
        self.dashboard.edit({key: entries or None})

    @on(Button.Pressed, "#layer-add")
    def add_layer(self) -> None:
        self._edit_list("layer_models", "#layer-table", self._layer_entry(), replace=False)

    @on(Button.Pressed, "#layer-update")
    def update_layer(self) -> None:
        self._edit_list("layer_models", "#layer-table", self._layer_entry(), replace=True)

    @on(Button.Pressed, "#layer-remove")
    def remove_layer(self) -> None:
        self._edit_list("layer_models", "#layer-table", None, replace=False)

    @on(Button.Pressed, "#end-add")
    def add_end(self) -> None:
        self._edit_list("end_models", "#end-table", self._end_entry(), replace=False)

    @on(Button.Pressed, "#end-update")
    def update_end(self) -> None:
        self._edit_list("end_models", "#end-table", self._end_entry(), replace=True)

    @on(Button.Pressed, "#end-remove")
    def remove_end(self) -> None:
        self._edit_list("end_models", "#end-table", None, replace=False)
