"""Low-priority threads for bulk work beside a node's own: sealing big messages, reading weight files.

A node that serves model weights to peers seals and reads megabytes a second. Done on the
event loop, that CPU time is taken from whatever else the machine runs at the same
priority, above all the node's own decode steps (a lane thread). Done here, in a small
pool of threads whose nice value is raised to :data:`BULK_NICE`, the kernel runs it only
when the node's own threads leave a core free; ChaCha20-Poly1305, SHA-256 and file reads
release the GIL over large buffers, so the pool does not hold the decode thread back either.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

log = logging.getLogger(__name__)

BULK_NICE = 19
BULK_THREADS = 2
# Payloads at least this big are sealed in the pool instead of on the event loop.
BULK_SEAL_BYTES = 1 << 20

Result = TypeVar("Result")

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _lower_priority() -> None:
    """Raise this thread's nice value (Linux: per thread); elsewhere the pool runs at normal priority."""
    try:
        thread_id = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, thread_id)
        os.setpriority(os.PRIO_PROCESS, thread_id, max(current, BULK_NICE))
    except (AttributeError, OSError) as error:
        # No per-thread priorities here (not Linux, or refused): the work still runs, only not deferred.
        log.debug("bulk thread keeps its priority: %s", error)


def bulk_executor() -> ThreadPoolExecutor:
    """The process's pool of low-priority bulk threads (created on first use)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(
                BULK_THREADS, thread_name_prefix="lp-bulk", initializer=_lower_priority
            )
        return _executor


async def run_bulk(function: Callable[..., Result], *arguments: object) -> Result:
    """``function(*arguments)`` on a low-priority bulk thread."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(bulk_executor(), functools.partial(function, *arguments))
