"""Pipes: every model's segments in layer order, the node hosting each, complete or not.

A segment on a node this node's pipes step through shows that hop's step time
(network round trip plus the peer's compute, from language_pipes.metrics).
"""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.widgets import Static

from language_pipes.metrics import hop_latencies
from language_pipes.tui.status import draw_pipe, hop_latency_text, pipe_views
from language_pipes.tui.tabs.base import DashboardTab


class PipesTab(DashboardTab):
    def compose(self) -> ComposeResult:
        yield Static("", id="pipes")

    def refresh_live(self) -> None:
        status = self.dashboard.control.status()
        widget = self.query_one("#pipes", Static)
        if status is None:
            widget.update("Start the network server to see the pipes of the network.")
            return
        total = {str(model.model_id): model.total_layers for model in status.models}
        first = {
            str(model.model_id): model.first_shared_layer
            for model in status.models
            if model.first_shared_layer is not None
        }
        complete = {str(model.model_id): model.servable for model in status.models if model.has_end_model}
        views = pipe_views(status.records, total, first, complete)
        if not views:
            widget.update("No model is hosted anywhere in the network yet.")
            return
        hops = hop_latencies()
        table = Table(expand=True)
        for column in ("Model", "Layers", "Segments (layer order)", "State"):
            table.add_column(column)
        for view in views:
            segments = "\n".join(
                f"{_layers(s.start_layer, s.end_layer)} on {s.node_id}{'' if s.loaded else ' (loading)'}"
                + (f", {latency}" if (latency := hop_latency_text(hops.get(s.node_id))) else "")
                for s in view.segments
            )
            gaps = ", ".join(f"{start}-{end - 1}" for start, end in view.gaps())
            if view.complete is None:
                state = "layers only here"
            elif view.complete:
                state = "[green]complete[/]"
            else:
                state = f"[red]incomplete[/] (missing {gaps})" if gaps else "[red]incomplete[/]"
            if view.loading:
                state += " [yellow]loading[/]"
            ends = ", ".join(view.end_model_nodes) or "?"
            local = ""
            if view.first_shared_layer:
                local = f"{_layers(0, view.first_shared_layer)} on end model ({ends})"
            table.add_row(
                view.model_id,
                f"{view.total_layers or '?'}\n{draw_pipe(view, width=40)}",
                "\n".join(part for part in (local, segments) if part) or "-",
                state,
            )
        widget.update(table)


def _layers(start: int, end: int) -> str:
    """``3`` for one layer, ``3-9`` for several (inclusive, as people count)."""
    return str(start) if end - start == 1 else f"{start}-{end - 1}"
