"""Network: status, peers and what they host; configure identity, key, addresses and peers."""

from __future__ import annotations

import secrets

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Button, DataTable, Input, Label, OptionList, Static

from language_pipes.config_report import shorten_network_key
from language_pipes.tui.menu import ConfirmScreen
from language_pipes.tui.status import describe_segment
from language_pipes.tui.tabs.base import DashboardTab, set_input, typed_text

# Input id -> (config key, value type).
SCALAR_INPUTS: dict[str, tuple[str, type]] = {
    "node-id": ("node_id", str),
    "network-ip": ("network_ip", str),
    "peer-port": ("peer_port", int),
}


class NetworkTab(DashboardTab):
    show_key = False

    def compose(self) -> ComposeResult:
        yield Static("", id="network-status")
        yield Static("Peers", classes="section")
        yield DataTable(id="peers", cursor_type="row")
        yield Static("Configure (press Enter in a field to save it)", classes="section")
        with Horizontal(classes="field"):
            yield Label("Node id", classes="label")
            yield Input(placeholder="a name for this computer, e.g. office-pc", id="node-id")
        with Horizontal(classes="field"):
            yield Label("Advertised IP", classes="label")
            yield Input(placeholder="127.0.0.1", id="network-ip")
        with Horizontal(classes="field"):
            yield Label("Peer port", classes="label")
            yield Input(placeholder="5000", id="peer-port")
        with Horizontal(classes="field"):
            yield Label("Network key", classes="label")
            yield Static("", id="network-key")
        with Horizontal(classes="buttons"):
            yield Button("Generate key", id="network-key-generate")
            yield Button("Show / hide key", id="network-key-show")
            yield Button("Remove key", id="network-key-remove", variant="error")
        yield Static("Bootstrap nodes", classes="section")
        yield OptionList(id="bootstrap-list", classes="short-list")
        with Horizontal(classes="field"):
            yield Input(placeholder="address, e.g. 192.168.0.10", id="bootstrap-address")
            yield Input(placeholder="port, e.g. 5000", id="bootstrap-port")
            yield Button("Add", id="bootstrap-add")
            yield Button("Remove selected", id="bootstrap-remove")
        yield Static("Whitelist (only these node ids may talk to this node; empty: any)", classes="section")
        yield OptionList(id="whitelist-list", classes="short-list")
        with Horizontal(classes="field"):
            yield Input(placeholder="node id", id="whitelist-id")
            yield Button("Add", id="whitelist-add")
            yield Button("Remove selected", id="whitelist-remove")

    def on_mount(self) -> None:
        self.query_one("#peers", DataTable).add_columns("Node", "Address", "Hosts", "End models", "Load")

    def refresh_view(self) -> None:
        values = self.dashboard.document.values()
        for input_id, (key, _) in SCALAR_INPUTS.items():
            set_input(self.query_one(f"#{input_id}", Input), values.get(key))
        key = values.get("network_key")
        if key is None:
            shown = "[b]not set: any node that reaches this one can join[/b] (sessions are still encrypted)"
        else:
            shown = str(key) if self.show_key else shorten_network_key(str(key))
        self.query_one("#network-key", Static).update(shown)
        bootstrap = self.query_one("#bootstrap-list", OptionList)
        bootstrap.clear_options()
        bootstrap.add_options(
            [f"{n.get('address')}:{n.get('port')}" for n in values.get("bootstrap_nodes", [])]
        )
        whitelist = self.query_one("#whitelist-list", OptionList)
        whitelist.clear_options()
        whitelist.add_options([str(node_id) for node_id in values.get("whitelist_node_ids", [])])

    def refresh_live(self) -> None:
        control = self.dashboard.control
        table = self.query_one("#peers", DataTable)
        table.clear()
        status = control.status()
        if status is None:
            self.query_one("#network-status", Static).update(f"Network server: {control.network_state}")
            return
        records = status.records
        self.query_one("#network-status", Static).update(
            f"Network server: running as {status.node_id} on port {status.peer_port}; "
            f"{len(records) - 1} peer(s)"
        )
        for node_id, record in sorted(records.items()):
            hosts = ", ".join(describe_segment(segment) for segment in record.segments)
            me = " (this node)" if node_id == status.node_id else ""
            table.add_row(
                f"{node_id}{me}",
                f"{record.address}:{record.port}",
                hosts or "-",
                ", ".join(record.end_models) or "-",
                str(record.load),
            )

    @on(Input.Submitted, "#node-id, #network-ip, #peer-port")
    def save_scalar(self, event: Input.Submitted) -> None:
        key, kind = SCALAR_INPUTS[str(event.input.id)]
        self.dashboard.edit({key: typed_text(event.value, kind)})

    @on(Button.Pressed, "#network-key-generate")
    def generate_key(self) -> None:
        if self.dashboard.edit({"network_key": secrets.token_hex(16)}):
            self.dashboard.notify_user(
                "New network key saved: every node of this network needs the same key."
            )

    @on(Button.Pressed, "#network-key-show")
    def toggle_key(self) -> None:
        self.show_key = not self.show_key
        self.refresh_view()

    @on(Button.Pressed, "#network-key-remove")
    def remove_key(self) -> None:
        def confirmed(answer: bool | None) -> None:
            if answer:
                self.dashboard.edit({"network_key": None})

        self.app.push_screen(
            ConfirmScreen(
                "Remove the network key? Any node that can reach this one may join, and "
                "handshakes travel in the clear (sessions stay encrypted, but authenticate nobody).",
                yes="Remove",
            ),
            confirmed,
        )

    @on(Input.Submitted, "#bootstrap-port")
    @on(Button.Pressed, "#bootstrap-add")
    def add_bootstrap(self) -> None:
        address = self.query_one("#bootstrap-address", Input).value.strip()
        port = typed_text(self.query_one("#bootstrap-port", Input).value, int)
        nodes = list(self.dashboard.document.get("bootstrap_nodes", []))
        if self.dashboard.edit({"bootstrap_nodes": [*nodes, {"address": address, "port": port}]}):
            self.query_one("#bootstrap-address", Input).value = ""
            self.query_one("#bootstrap-port", Input).value = ""

    @on(Button.Pressed, "#bootstrap-remove")
    def remove_bootstrap(self) -> None:
        index = self.query_one("#bootstrap-list", OptionList).highlighted
        nodes = list(self.dashboard.document.get("bootstrap_nodes", []))
        if index is not None and index < len(nodes):
            del nodes[index]
            self.dashboard.edit({"bootstrap_nodes": nodes or None})

    @on(Input.Submitted, "#whitelist-id")
    @on(Button.Pressed, "#whitelist-add")
    def add_whitelist(self) -> None:
        node_id = self.query_one("#whitelist-id", Input).value.strip()
        ids = list(self.dashboard.document.get("whitelist_node_ids", []))
        if self.dashboard.edit({"whitelist_node_ids": [*ids, node_id]}):
            self.query_one("#whitelist-id", Input).value = ""

    @on(Button.Pressed, "#whitelist-remove")
    def remove_whitelist(self) -> None:
        index = self.query_one("#whitelist-list", OptionList).highlighted
        ids = list(self.dashboard.document.get("whitelist_node_ids", []))
        if index is not None and index < len(ids):
            del ids[index]
            self.dashboard.edit({"whitelist_node_ids": ids or None})
