"""Models: installed model folders, and the layer and end models this node hosts."""

from __future__ import annotations

from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal
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

from language_pipes.models.store import ModelStore, ModelStoreError
from language_pipes.tui.tabs.base import DashboardTab, typed_text

DATA_TYPES = ("bfloat16", "float16", "float32")


class ModelsTab(DashboardTab):
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
                with Horizontal(classes="buttons"):
                    yield Button("Add", id="layer-add", variant="primary")
                    yield Button("Replace selected", id="layer-update")
                    yield Button("Remove selected", id="layer-remove", variant="error")
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
        self.query_one("#layer-table", DataTable).add_columns("Model", "Device", "Memory GB", "Data type")
        self.query_one("#end-table", DataTable).add_columns("Model", "Local layers", "Device")
        self.query_one("#install-progress", ProgressBar).display = False
        self.refresh_installed()

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
        """Download or convert a model in a thread; the bar runs until it is done."""
        self.app.call_from_thread(self._show_install, f"Installing {model_id}…", True)
        try:
            path = ModelStore().ensure(model_id)
        except ModelStoreError as error:
            # Unknown id, no connection, gated model: the store's one-line reason.
            self.app.call_from_thread(self._show_install, str(error), False)
            return
        self.app.call_from_thread(self._show_install, f"Installed {model_id} at {path}", False)

    def _show_install(self, message: str, running: bool) -> None:
        self.query_one("#install-progress", ProgressBar).display = running
        self.query_one("#install-status", Static).update(message)
        if not running:
            self.refresh_installed()

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
