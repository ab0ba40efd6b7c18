"""Log records of the node, kept for the UI's log panel (the log file gets its own copy)."""

from __future__ import annotations

import logging
import threading
from collections import deque

UI_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
KEPT_LINES = 2000


class UiLogHandler(logging.Handler):
    """Collects formatted lines from any thread; the UI drains them on its own timer."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(UI_LOG_FORMAT, datefmt="%H:%M:%S"))
        self._lines: deque[str] = deque(maxlen=KEPT_LINES)
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - logging must never break the caller; the stdlib's own policy
            self.handleError(record)
            return
        with self._guard:
            self._lines.append(line)

    def drain(self) -> list[str]:
        """Lines logged since the last call, oldest first."""
        with self._guard:
            lines = list(self._lines)
            self._lines.clear()
        return lines
