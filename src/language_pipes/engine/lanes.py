"""The scheduler's lanes: step loops in their own threads, each supervised so no request waits forever.

Lane 0 admits new requests for every lane; a lane that fails unexpectedly
fails the requests it touched, pauses a moment and goes on.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import TYPE_CHECKING

from language_pipes.engine.sequence import Sequence
from language_pipes.engine.types import FailureKind

if TYPE_CHECKING:
    from language_pipes.engine.scheduler import Scheduler

log = logging.getLogger(__name__)

# How long an idle lane waits for work before checking whether it should stop.
IDLE_WAIT_S = 0.5
# Pause after an unexpected lane failure, so a failure that repeats cannot spin a core.
FAILURE_PAUSE_S = 0.05


def fail(
    sequence: Sequence, message: str, failure: FailureKind = "internal", public: str | None = None
) -> None:
    """Finish ``sequence`` with an error; never raises (its client may be gone already)."""
    try:
        sequence.finish("error", message, failure, public)
    except Exception:  # noqa: BLE001 - emitting to a vanished client must not take the lane down
        log.exception("could not report the failure of sequence %s", sequence.sequence_id)
        sequence.finished = True


class Lane:
    """One step loop over its own sequences, in its own thread."""

    def __init__(self, scheduler: Scheduler, index: int) -> None:
        self.scheduler = scheduler
        self.index = index
        self.active: list[Sequence] = []
        self.joining: queue.Queue[Sequence | None] = queue.Queue()
        self.thread = threading.Thread(
            target=self._run, name=f"scheduler:{scheduler.end_model.model_id}:{index}", daemon=True
        )

    def _run(self) -> None:
        """The supervised loop: whatever fails, the affected requests end and the lane goes on."""
        while not self.scheduler.stopping.is_set():
            try:
                self._cycle()
            except Exception as error:  # noqa: BLE001 - the supervisor: fail who was affected, keep the lane
                log.exception("scheduler lane %d failed; its requests end with an error", self.index)
                for sequence in self.active:
                    fail(sequence, f"generation failed: {type(error).__name__}")
                self._drop_after_failure()
                self.scheduler.stopping.wait(FAILURE_PAUSE_S)

    def _cycle(self) -> None:
        scheduler = self.scheduler
        self._take_joining(block=not self.active)
        scheduler.drop_finished(self.active)
        if self.active:
            scheduler.step(self.active)

    def _drop_after_failure(self) -> None:
        try:
            self.scheduler.drop_finished(self.active)
        except Exception:  # noqa: BLE001 - releasing caches failed too: forget the sequences anyway
            log.exception("scheduler lane %d could not release its sequences", self.index)
            self.active.clear()

    def _take_joining(self, block: bool) -> None:
        """Lane 0 admits new requests for every lane; the others wait for what it hands them."""
        if self.index == 0:
            self.scheduler.admit(timeout=IDLE_WAIT_S if block else None)
        try:
            waiting = block and self.index > 0
            sequence = self.joining.get(timeout=IDLE_WAIT_S) if waiting else self.joining.get_nowait()
        except queue.Empty:
            return
        while True:
            if sequence is not None:
                self.active.append(sequence)
            try:
                sequence = self.joining.get_nowait()
            except queue.Empty:
                return


def drain(pending: queue.Queue[Sequence | None]) -> list[Sequence | None]:
    drained = []
    while True:
        try:
            drained.append(pending.get_nowait())
        except queue.Empty:
            return drained
