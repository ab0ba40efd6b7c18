"""What keeps the network's receive loops alive whatever arrives.

* :class:`FrameGuard` counts the frames a loop dropped (readable as
  ``PeerNetwork.dropped_frames``) and logs them rate-limited: a few lines per
  kind of drop and interval, then one line saying how many were held back, so
  a flood of garbage cannot flood the log file.
* :func:`supervise` runs an asyncio receive loop and starts it again (after a
  short pause) when it dies of an exception nobody expected.
* :class:`TokenBucket` rate-limits actions a peer can trigger (outbound
  connection attempts).

Thread-safe: the step-lane thread and the event loop share one guard.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from language_pipes.network.crypto import FrameRejected
from language_pipes.network.wire import MalformedFrame

# At most LOG_BURST log lines per reason in each LOG_INTERVAL_S (the first ones always go out).
LOG_INTERVAL_S = 10.0
LOG_BURST = 20
# Pause before a supervisor restarts a loop that died (doubles up to the maximum).
RESTART_PAUSE_S = 0.05
RESTART_PAUSE_MAX_S = 2.0


@dataclass
class _LogSlot:
    window_start: float
    lines: int = 0
    suppressed: int = 0


class RateLimitedLog:
    """Logs at most ``burst`` lines per ``reason`` in each ``interval_s``, counting what it held back."""

    def __init__(
        self, logger: logging.Logger, interval_s: float = LOG_INTERVAL_S, burst: int = LOG_BURST
    ) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._burst = burst
        self._slots: dict[str, _LogSlot] = {}
        self._lock = threading.Lock()

    def log(self, level: int, reason: str, message: str, *arguments: object, exc_info: bool = False) -> None:
        now = time.monotonic()
        suppressed = 0
        with self._lock:
            slot = self._slots.get(reason)
            if slot is None or now - slot.window_start >= self._interval_s:
                suppressed = slot.suppressed if slot is not None else 0
                slot = self._slots[reason] = _LogSlot(now)
            if slot.lines >= self._burst:
                slot.suppressed += 1
                return
            slot.lines += 1
        if suppressed:
            message += f" ({suppressed} similar lines suppressed)"
        self._logger.log(level, message, *arguments, exc_info=exc_info)

    def warning(self, reason: str, message: str, *arguments: object) -> None:
        self.log(logging.WARNING, reason, message, *arguments)


class FrameGuard:
    """Counts dropped frames per receive loop and logs them rate-limited."""

    def __init__(self, logger: logging.Logger, interval_s: float = LOG_INTERVAL_S) -> None:
        self.log = RateLimitedLog(logger, interval_s)
        self._lock = threading.Lock()
        self._dropped: dict[str, int] = {}
        self.restarts = 0

    @property
    def dropped_frames(self) -> int:
        with self._lock:
            return sum(self._dropped.values())

    def dropped_by_loop(self) -> dict[str, int]:
        with self._lock:
            return dict(self._dropped)

    def dropped(self, loop: str, origin: str, error: BaseException) -> None:
        """One frame that ``loop`` could not handle was dropped; ``error`` says why."""
        with self._lock:
            self._dropped[loop] = self._dropped.get(loop, 0) + 1
        unexpected = not isinstance(error, _EXPECTED_DROP_ERRORS)
        self.log.log(
            logging.ERROR if unexpected else logging.WARNING,
            f"{loop}:{type(error).__name__}",
            "%s: dropped a frame from %s: %s: %s",
            loop,
            origin,
            type(error).__name__,
            _short(error),
            exc_info=unexpected,
        )


def _short(error: BaseException) -> str:
    text = str(error)
    return text if len(text) <= 200 else text[:200] + "..."


# Drops that are the sender's fault and need no traceback in the log.
_EXPECTED_DROP_ERRORS: tuple[type[BaseException], ...] = (
    MalformedFrame,
    FrameRejected,
    ValueError,
    TypeError,
    KeyError,
    RecursionError,
)


async def supervise(
    name: str,
    run_loop: Callable[[], Awaitable[None]],
    guard: FrameGuard,
    keep_running: Callable[[], bool],
) -> None:
    """Run ``run_loop`` until it returns; restart it whenever it dies of an unexpected exception."""
    pause = RESTART_PAUSE_S
    while keep_running():
        try:
            await run_loop()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            # The loop's own per-frame guard missed this one: log it (rate-limited) and start again.
            guard.restarts += 1
            guard.log.log(logging.ERROR, f"restart:{name}", "%s died; restarting it", name, exc_info=True)
        await asyncio.sleep(pause)
        pause = min(RESTART_PAUSE_MAX_S, pause * 2)


class TokenBucket:
    """Allows ``rate`` actions per second on average, bursts of up to ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._updated = time.monotonic()

    def take(self, now: float | None = None) -> bool:
        current = time.monotonic() if now is None else now
        self._tokens = min(self._burst, self._tokens + max(0.0, current - self._updated) * self._rate)
        self._updated = current
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
