"""What every dashboard tab shares: a way to reach the dashboard, and form helpers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textual.containers import VerticalScroll
from textual.widgets import Input

if TYPE_CHECKING:
    from language_pipes.tui.dashboard import Dashboard


class DashboardTab(VerticalScroll):
    """A tab's content; ``refresh_view`` redraws it from the config and the running node."""

    @property
    def dashboard(self) -> Dashboard:
        from language_pipes.tui.dashboard import Dashboard

        screen = self.screen
        assert isinstance(screen, Dashboard)
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
