"""Continuous batching on the origin: every live sequence advances in one packed forward per step.

The scheduler thread owns the step loop. New requests join between steps;
each step packs one token per decoding sequence plus prefill chunks up to a
token budget, runs them through the end model's local layers and the
sequence's route, and samples the next token of every sequence that has fed
all its known tokens.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from itertools import groupby

from language_pipes.engine.sampling import pick_token
from language_pipes.engine.sequence import Sequence
from language_pipes.models.end_model import EndModel
from language_pipes.models.segment import SegmentBatch
from language_pipes.pipes.route import Route

log = logging.getLogger(__name__)

RouteProvider = Callable[[], Route | None]

# How many times one sequence may move to a new route before its request fails.
MAX_REPLAYS = 3


class RouteUnavailableError(RuntimeError):
    """No complete pipe can run this model's layers right now."""


class Scheduler:
    """Runs the step loop for one end model in a background thread."""

    def __init__(
        self,
        end_model: EndModel,
        choose_route: RouteProvider,
        *,
        step_token_budget: int = 512,
        prefill_chunk: int = 256,
    ) -> None:
        self.end_model = end_model
        self.choose_route = choose_route
        self.step_token_budget = step_token_budget
        self.prefill_chunk = prefill_chunk
        self._incoming: queue.Queue[Sequence] = queue.Queue()
        self._active: list[Sequence] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"scheduler:{end_model.model_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._incoming.put_nowait(None)  # type: ignore[arg-type]  # wakes an idle loop
        self._thread.join(timeout=10)
        for sequence in self._active:
            sequence.finish("error", "the node is shutting down", 503)

    def submit(self, sequence: Sequence) -> None:
        self._incoming.put_nowait(sequence)

    @property
    def active_count(self) -> int:
        return len(self._active)

    def active_sequences(self) -> tuple[Sequence, ...]:
        """A snapshot of the live sequences (for progress displays; do not mutate them)."""
        return tuple(self._active)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._admit(block=not self._active)
            self._drop_finished()
            if not self._active:
                continue
            try:
                self.step()
            except Exception as error:  # noqa: BLE001 - a step failure must reach every client, not kill the loop
                log.exception("step failed")
                for sequence in self._active:
                    sequence.finish("error", f"generation failed: {error}", 500)
                self._drop_finished()

    def _admit(self, block: bool) -> None:
        try:
            first = self._incoming.get(timeout=0.5) if block else self._incoming.get_nowait()
        except queue.Empty:
            return
        pending = [first]
        while True:
            try:
                pending.append(self._incoming.get_nowait())
            except queue.Empty:
                break
        for sequence in pending:
            if sequence is None:
                continue
            sequence.route = self.choose_route()
            if sequence.route is None:
                sequence.finish("error", "no complete pipe serves this model right now", 503)
                continue
            try:
                sequence.route.open(sequence.sequence_id)
            except Exception as error:  # noqa: BLE001 - a hop refused or is gone: this request fails, not the loop
                log.warning("could not open sequence on %s: %s", sequence.route, error)
                sequence.finish("error", f"the pipe refused the request: {error}", 503)
                sequence.route.release(sequence.sequence_id)
                continue
            self._active.append(sequence)

    def _drop_finished(self) -> None:
        still_active = []
        for sequence in self._active:
            if sequence.cancelled.is_set() and not sequence.finished:
                sequence.finished = True
            if sequence.finished:
                self._release(sequence)
            else:
                still_active.append(sequence)
        self._active = still_active

    def _release(self, sequence: Sequence) -> None:
        self.end_model.local_layers.release(sequence.sequence_id)
        if sequence.route is not None:
            sequence.route.release(sequence.sequence_id)

    def step(self) -> None:
        """One packed forward per route, then sampling for every sequence that is due a token."""
        by_route = groupby(sorted(self._active, key=lambda s: id(s.route)), key=lambda s: id(s.route))
        for _, group in by_route:
            members = list(group)
            route = members[0].route
            if route is not None and route.retired:
                self._reroute(members, RuntimeError(f"{route} was retired"), counts_as_failure=False)
                continue
            try:
                self._step_route(members)
            except Exception as error:  # noqa: BLE001 - a lost hop only affects the sequences on that route
                log.warning("route %s failed: %s", members[0].route, error)
                self._reroute(members, error)
        self._drop_finished()

    def _reroute(self, members: list[Sequence], error: Exception, counts_as_failure: bool = True) -> None:
        """Move the sequences of a failed route to a new one and replay their tokens there.

        The origin owns every token, so feeding prompt + generated tokens again
        rebuilds the caches on the new route; generation then continues where it
        stopped. Only when no route covers the layers (or replays keep failing)
        does the client get an error.
        """
        for sequence in members:
            assert sequence.route is not None
            sequence.route.release(sequence.sequence_id)
            sequence.replays += int(counts_as_failure)
            route = self.choose_route() if sequence.replays <= MAX_REPLAYS else None
            if route is None:
                sequence.finish(
                    "error", f"a node on the route failed and no other route is available: {error}", 503
                )
                continue
            try:
                route.open(sequence.sequence_id)
            except Exception as open_error:  # noqa: BLE001 - the new route refused too: report both failures
                sequence.finish(
                    "error", f"a node on the route failed ({error}); rerouting failed: {open_error}", 503
                )
                continue
            log.info(
                "replaying sequence %s (%d tokens) on %s", sequence.sequence_id, len(sequence.tokens), route
            )
            sequence.start_replay(route)

    def _plan(self, members: list[Sequence]) -> list[tuple[Sequence, list[int]]]:
        decoding = [s for s in members if s.unfed == 1]
        prefilling = [s for s in members if s.unfed > 1]
        plan = [(s, s.next_chunk(1)) for s in decoding]
        budget = self.step_token_budget - len(plan)
        for sequence in prefilling:
            if budget <= 0 and plan:
                break
            chunk = sequence.next_chunk(max(1, min(self.prefill_chunk, budget)))
            plan.append((sequence, chunk))
            budget -= len(chunk)
        return plan

    def _step_route(self, members: list[Sequence]) -> None:
        plan = self._plan(members)
        if not plan:
            return
        batch = SegmentBatch(
            sequence_ids=tuple(s.sequence_id for s, _ in plan),
            start_positions=tuple(s.fed for s, _ in plan),
            lengths=tuple(len(chunk) for _, chunk in plan),
        )
        route = plan[0][0].route
        assert route is not None
        hidden = self.end_model.embed([token for _, chunk in plan for token in chunk])
        hidden = self.end_model.local_layers.forward(hidden, batch)
        hidden = route.forward(hidden, batch)
        due_rows: list[int] = []
        due: list[Sequence] = []
        row = -1
        for sequence, chunk in plan:
            row += len(chunk)
            sequence.advance(len(chunk))
            if sequence.unfed == 0:
                due_rows.append(row)
                due.append(sequence)
        if not due:
            return
        logits = self.end_model.logits(hidden[0, due_rows])
        vocab_size = logits.shape[-1]
        for sequence, row_logits in zip(due, logits, strict=True):
            if sequence.cancelled.is_set():
                continue
            token = pick_token(
                row_logits,
                sequence.request.sampling,
                sequence.generated,
                sequence.allowed_tokens(vocab_size),
                sequence.random,
            )
            sequence.add_token(token, self.end_model.eos_token_ids)
