"""What every dashboard tab shares: what a tab may ask of its dashboard, and form helpers.

A tab sees its dashboard through :class:`DashboardActions`, so the tabs do not
import :mod:`language_pipes.tui.dashboard`, which imports every tab.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from textual.containers import VerticalScroll
from textual.widgets import Input

from language_pipes.tui.config_document import ConfigDocument
from language_pipes.tui.node_control import NodeControl


@runtime_checkable
class DashboardActions(Protocol):
    """The dashboard as its tabs use it: the config file, the node, and the user-visible actions."""

    document: ConfigDocument
    control: NodeControl

    def edit(self, changes: Mapping[str, Any]) -> bool: ...

    def notify_user(self, message: str, error: bool = False) -> None: ...

    def refresh_live(self) -> None: ...

    def start_network(self, then_job_server: bool = False) -> None: ...

    def stop_network(self) -> None: ...

    def start_job_server(self) -> None: ...

    def stop_job_server(self) -> None: ...


class DashboardTab(VerticalScroll):
    """A tab's content; ``refresh_view`` redraws it from the config and the running node."""

    @property
    def dashboard(self) -> DashboardActions:
        screen = self.screen
        assert isinstance(screen, DashboardActions)
        return screen

    def refresh_view(self) -> None:
        """Redraw the parts that follow the config file (called after every edit)."""

    def refresh_live(self) -> None:
        """Redraw the parts that follow the running node (called every second)."""


def typed_text(text: str, kind: type) -> Any:
    """An input's text as the config value: blank removes the key; numbers when they parse.

    Text that does not parse is passed on unchanged so validation names the key
    and the problem with the config file's own message (``must be an integer``).
    """
    text = text.strip()
    if not text:
        return None
    if kind is int:
        try:
            return int(text)
        except ValueError:
            # Not a number: validation reports it.
            return text
    if kind is float:
        try:
            return float(text)
        except ValueError:
            # Not a number: validation reports it.
            return text
    return text


def set_input(widget: Input, value: Any) -> None:
    """Show a config value in an input unless the user is typing in it."""
    if not widget.has_focus:
        widget.value = "" if value is None else str(value)
