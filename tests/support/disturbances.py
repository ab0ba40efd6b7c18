"""Freezing and slowing a node's process with job-control signals, for the chaos run.

A *frozen* node is stopped with ``SIGSTOP``: it keeps every socket open but
answers nothing (a hung machine, a swapped-out VM, a paused container), until
``SIGCONT`` lets it go on as if no time had passed. A *slow* node is stopped
most of the time: :class:`SlowDown` runs a duty cycle on its own thread that
lets the process run ``running_s`` out of every ``period_s`` seconds, so each
of its steps takes about ``period_s / running_s`` times longer than usual (an
overloaded or throttled machine). Both act on the whole process group, so no
thread of the node escapes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

# A slow node runs 20% of the time: 0.1 s of every 0.5 s (stops stay well under the 3 s heartbeat timeout).
SLOW_PERIOD_S = 0.5
SLOW_RUNNING_S = 0.1


def freeze(process_group: int) -> None:
    """Stop every process of the group where it stands (``SIGSTOP`` cannot be caught)."""
    with contextlib.suppress(ProcessLookupError):  # it already exited: nothing to stop
        os.killpg(process_group, signal.SIGSTOP)


def thaw(process_group: int) -> None:
    """Let a frozen group go on (``SIGCONT``)."""
    with contextlib.suppress(ProcessLookupError):  # it already exited: nothing to wake
        os.killpg(process_group, signal.SIGCONT)


class SlowDown:
    """Stop a process group ``1 - running_s / period_s`` of the time until :meth:`stop`."""

    def __init__(
        self, process_group: int, period_s: float = SLOW_PERIOD_S, running_s: float = SLOW_RUNNING_S
    ) -> None:
        if not 0 < running_s < period_s:
            raise ValueError("running_s must be between 0 and period_s")
        self.process_group = process_group
        self.period_s = period_s
        self.running_s = running_s
        self.cycles = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"slow-{process_group}", daemon=True)

    def start(self) -> SlowDown:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                freeze(self.process_group)
                if self._stopping.wait(self.period_s - self.running_s):
                    break
                thaw(self.process_group)
                self.cycles += 1
                self._stopping.wait(self.running_s)
        finally:
            thaw(self.process_group)  # never leave the node stopped behind

    def stop(self) -> None:
        """End the duty cycle; the group runs normally again when this returns."""
        self._stopping.set()
        self._thread.join(self.period_s * 2)
        thaw(self.process_group)
