"""Continuous batching on the origin: every live sequence advances in one packed forward per step.

The scheduler's lanes own the step loop. New requests join between steps;
each step packs one token per decoding sequence plus prefill chunks up to a
token budget, runs them through the end model's local layers and the
sequence's route, and samples the next token of every sequence that has fed
all its known tokens. With speculation on, a decoding sequence also feeds the
tokens it drafted, and keeps those the model agrees with
(engine/speculation.py).

Sequences whose route reaches another machine are spread over two lanes
(threads) so the pipe carries two micro-batches: while a layer node runs one
lane's step, the origin runs the other lane's embedding, local layers, head
and sampling. Routes whose nodes share this machine's cores use one lane, so
a step is one forward over every sequence (two half batches would only
compete for the same cores).

Failures stay where they belong. A hop that fails or misses its step
deadline (the transport's ``step_timeout_s``) fails its route: the route's
sequences replay elsewhere, at most :data:`MAX_REPLAYS` times. Sampling,
grammar and detokenizing failures belong to one sequence, which alone ends
with an error. Each lane thread is supervised: an unexpected exception fails
the requests it touched and the loop goes on, so no request waits forever.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from itertools import groupby

import torch

from language_pipes.engine.lanes import Lane, drain, fail
from language_pipes.engine.sampling import SamplingError
from language_pipes.engine.sequence import Sequence
from language_pipes.engine.speculation import (
    SpeculationSettings,
    accept_longest_prefix,
    supports_speculation,
)
from language_pipes.models.end_model import EndModel
from language_pipes.models.segment import KVBudgetExceededError, SegmentBatch
from language_pipes.network.types import PeerRequestFailed, RefusalKind
from language_pipes.pipes.route import Route

log = logging.getLogger(__name__)

RouteProvider = Callable[[], Route | None]
# A step's plan: each sequence, the tokens it feeds, and how many of them (at the end) are drafts.
Plan = list[tuple[Sequence, list[int], int]]

# How many times one sequence may move to a new route before its request fails.
MAX_REPLAYS = 3
# Micro-batches in flight through a route that crosses the network.
REMOTE_LANES = 2


class RouteFailure(Exception):
    """A hop of the route failed or missed its deadline: the route's sequences move elsewhere."""


_REFUSAL_WORDS = {
    RefusalKind.BUSY: "a layer node holds max_node_jobs sequences of this node",
    RefusalKind.NO_MEMORY: "a layer node has no KV memory left for it",
    RefusalKind.LEAVING: "a layer node is leaving the network",
}


def refusal_of(error: Exception) -> RefusalKind | None:
    """The typed reason a hop refused to open a sequence (a peer's, or this node's own KV budget)."""
    if isinstance(error, PeerRequestFailed):
        return error.refusal
    if isinstance(error, KVBudgetExceededError):
        return RefusalKind.NO_MEMORY
    return None


def refusal_for_client(refusal: RefusalKind | None) -> str:
    """What a client is told when every route refused its sequence: our words, never the peer's text."""
    words = _REFUSAL_WORDS.get(refusal) if refusal is not None else None
    return f"The pipe refused the request: {words}." if words else "The pipe refused the request."


class Scheduler:
    """Runs the step loops (lanes) of one end model in background threads."""

    def __init__(
        self,
        end_model: EndModel,
        choose_route: RouteProvider,
        *,
        step_token_budget: int = 512,
        prefill_chunk: int = 256,
        remote_lanes: int = REMOTE_LANES,
        aligned_prefill: bool = False,
        speculation: SpeculationSettings | None = None,
    ) -> None:
        self.end_model = end_model
        self.choose_route = choose_route
        self.step_token_budget = step_token_budget
        self.prefill_chunk = prefill_chunk
        # Batch-invariant mode: prefill chunks start at multiples of prefill_chunk, whatever else runs.
        self.aligned_prefill = aligned_prefill
        self.speculation = speculation or SpeculationSettings()
        self.speculating = self.speculation.enabled and supports_speculation(end_model.config)
        if self.speculation.enabled and not self.speculating:
            log.info(
                "%s has recurrent-state layers, which cannot roll back: no speculation", end_model.model_id
            )
        # Totals over every sequence (tokens drafted, drafts accepted), and who else wants each step's counts.
        self.tokens_drafted = 0
        self.tokens_accepted = 0
        self.on_speculation: Callable[[int, int], None] | None = None
        self._totals_lock = threading.Lock()
        self._incoming: queue.Queue[Sequence | None] = queue.Queue()
        self.stopping = threading.Event()
        self.lanes = [Lane(self, index) for index in range(max(1, remote_lanes))]

    def start(self) -> None:
        for lane in self.lanes:
            lane.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self._incoming.put_nowait(None)  # wakes idle lanes
        for lane in self.lanes:
            lane.joining.put_nowait(None)
        waiting: list[Sequence | None] = []
        for lane in self.lanes:
            lane.thread.join(timeout=10)
            waiting += lane.active
            waiting += drain(lane.joining)
        waiting += drain(self._incoming)
        for sequence in waiting:
            if sequence is not None:
                sequence.finish("error", "the node is shutting down", "unavailable")

    def submit(self, sequence: Sequence) -> None:
        self._incoming.put_nowait(sequence)

    @property
    def active_count(self) -> int:
        return sum(len(lane.active) for lane in self.lanes)

    def active_sequences(self) -> tuple[Sequence, ...]:
        """A snapshot of the live sequences (for progress displays; do not mutate them)."""
        return tuple(sequence for lane in self.lanes for sequence in lane.active)

    def admit(self, timeout: float | None) -> None:
        """Give newly submitted sequences a route and a lane (waits up to ``timeout`` for one).

        Only lane 0 calls this, so routes are opened from one thread.
        """
        try:
            first = self._incoming.get(timeout=timeout) if timeout else self._incoming.get_nowait()
        except queue.Empty:
            return
        for sequence in [first, *drain(self._incoming)]:
            if sequence is None:
                continue
            try:
                if self._open(sequence):
                    self._lane_for(sequence).joining.put_nowait(sequence)
            except Exception as error:  # noqa: BLE001 - admission failed for this request only
                log.exception("could not admit sequence %s", sequence.sequence_id)
                if sequence.route is not None:
                    sequence.route.release(sequence.sequence_id)
                fail(sequence, f"the request could not be scheduled: {type(error).__name__}", "unavailable")

    def _open(self, sequence: Sequence) -> bool:
        """Give a new sequence a route whose hops all accept it; a refusing or lost hop means another try."""
        failures: list[Exception] = []
        for _ in range(MAX_REPLAYS + 1):
            route = self.choose_route()
            if route is None:
                break
            try:
                route.open(sequence.sequence_id, self.max_tokens(sequence))
            except Exception as error:  # noqa: BLE001 - a hop refused or is gone: try a route without it
                log.warning("could not open sequence on %s: %s", route, error)
                failures.append(error)
                route.release(sequence.sequence_id)
                continue
            sequence.route = route
            return True
        if failures:
            last = failures[-1]
            message = f"the pipe refused the request: {str(last) or type(last).__name__}"
            fail(sequence, message, "unavailable", refusal_for_client(refusal_of(last)))
        else:
            fail(sequence, "no complete pipe serves this model right now", "unavailable")
        return False

    def max_tokens(self, sequence: Sequence) -> int:
        """The most tokens ``sequence`` can ever hold: what each hop reserves KV memory for."""
        wanted = len(sequence.request.prompt_token_ids) + sequence.request.max_new_tokens
        return max(1, min(wanted, self.end_model.context_length))

    def _lane_for(self, sequence: Sequence) -> Lane:
        assert sequence.route is not None
        if not sequence.route.spans_machines:
            return self.lanes[0]
        return min(self.lanes, key=lambda lane: len(lane.active) + lane.joining.qsize())

    def drop_finished(self, active: list[Sequence]) -> None:
        """Remove finished and cancelled sequences from ``active`` (in place), freeing their caches."""
        for sequence in active:
            if sequence.cancelled.is_set() and not sequence.finished:
                sequence.finished = True
        done = [sequence for sequence in active if sequence.finished]
        active[:] = [sequence for sequence in active if not sequence.finished]
        for sequence in done:  # after the list changed, so a freed cache never belongs to a listed sequence
            self._release(sequence)

    def _release(self, sequence: Sequence) -> None:
        try:
            self.end_model.release(sequence.sequence_id)
            if sequence.route is not None:
                sequence.route.release(sequence.sequence_id)
        except Exception:  # noqa: BLE001 - freeing is best effort; the hops' idle sweep frees what is left
            log.exception("could not release sequence %s", sequence.sequence_id)

    def step(self, active: list[Sequence]) -> None:
        """One packed forward per route, then sampling for every sequence that is due a token."""
        by_route = groupby(sorted(active, key=lambda s: id(s.route)), key=lambda s: id(s.route))
        for _, group in by_route:
            members = list(group)
            route = members[0].route
            if route is not None and route.retired:
                self._reroute(members, RuntimeError(f"{route} was retired"), counts_as_failure=False)
                continue
            try:
                self._step_route(members)
            except RouteFailure as failure:
                # A lost, failing or late hop only affects the sequences on that route.
                log.warning("route %s failed: %s", route, failure.__cause__)
                self._reroute(members, failure.__cause__ or failure)
            except Exception as error:  # noqa: BLE001 - a local failure: these requests end, the lane goes on
                log.exception("step on %s failed on this node", route)
                for sequence in members:
                    fail(sequence, f"generation failed: {type(error).__name__}")
        self.drop_finished(active)

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
            try:
                route = self.choose_route() if sequence.replays <= MAX_REPLAYS else None
                if route is None:
                    fail(
                        sequence,
                        f"a node on the route failed and no other route is available: {error}",
                        "unavailable",
                    )
                    continue
                route.open(sequence.sequence_id, self.max_tokens(sequence))
            except Exception as open_error:  # noqa: BLE001 - the new route refused too: report both failures
                fail(
                    sequence,
                    f"a node on the route failed ({error}); rerouting failed: {open_error}",
                    "unavailable",
                )
                continue
            log.info(
                "replaying sequence %s (%d tokens) on %s", sequence.sequence_id, len(sequence.tokens), route
            )
            sequence.start_replay(route)

    def _plan(self, members: list[Sequence]) -> Plan:
        decoding = [s for s in members if s.unfed == 1]
        prefilling = [s for s in members if s.unfed > 1]
        drafting = self.speculating and len(decoding) < self.speculation.busy_batch
        plan: Plan = []
        for sequence in decoding:
            draft = self._draft(sequence) if drafting else []
            plan.append((sequence, sequence.next_chunk(1) + draft, len(draft)))
        budget = self.step_token_budget - sum(len(chunk) for _, chunk, _ in plan)
        for sequence in prefilling:
            if budget <= 0 and plan:
                break
            if self.aligned_prefill:
                chunk = sequence.next_chunk(self.prefill_chunk, aligned_to=self.prefill_chunk)
                if len(chunk) > budget and plan:
                    continue  # the whole aligned chunk waits for a step with room
            else:
                chunk = sequence.next_chunk(max(1, min(self.prefill_chunk, budget)))
            plan.append((sequence, chunk, 0))
            budget -= len(chunk)
        return plan

    def _draft(self, sequence: Sequence) -> list[int]:
        try:
            return sequence.draft(self.speculation.max_tokens, self.max_tokens(sequence))
        except Exception:  # noqa: BLE001 - a draft is only a guess: a failing grammar query means no draft
            log.exception("drafting for sequence %s failed", sequence.sequence_id)
            return []

    def _step_route(self, members: list[Sequence]) -> None:
        plan = self._plan(members)
        if not plan:
            return
        batch = SegmentBatch(
            sequence_ids=tuple(s.sequence_id for s, _, _ in plan),
            start_positions=tuple(s.fed for s, _, _ in plan),
            lengths=tuple(len(chunk) for _, chunk, _ in plan),
            decode_runs=tuple(drafted > 0 for _, _, drafted in plan),
        )
        route = plan[0][0].route
        assert route is not None
        hidden = self.end_model.embed([token for _, chunk, _ in plan for token in chunk])
        hidden = self.end_model.local_layers.forward(hidden, batch)
        try:
            hidden = route.forward(hidden, batch)
        except Exception as error:  # noqa: BLE001 - any hop failure (lost, refused, late) fails the route
            raise RouteFailure(str(error)) from error
        hidden = self.end_model.finish_hidden(hidden, batch)
        due_rows: list[int] = []
        due: list[tuple[Sequence, list[int]]] = []
        row = -1
        for sequence, chunk, drafted in plan:
            row += len(chunk)
            sequence.advance(len(chunk) - drafted)  # drafts count as fed once accepted
            if sequence.unfed == 0:
                due_rows.extend(range(row - drafted, row + 1))  # the last token's row, then each draft's
                due.append((sequence, chunk[len(chunk) - drafted :]))
        if not due:
            return
        logits = self.end_model.logits(hidden[0, due_rows], decode_rows=any(draft for _, draft in due))
        first = 0
        for sequence, draft in due:
            rows = logits[first : first + len(draft) + 1]
            first += len(draft) + 1
            if not sequence.cancelled.is_set():
                self._next_tokens(sequence, rows, draft)

    def _next_tokens(self, sequence: Sequence, rows: torch.Tensor, draft: list[int]) -> None:
        """Sample, constrain and detokenize one sequence's next token(s); a failure ends that sequence only.

        Without a draft, ``rows`` is one row and yields one token; with one, the
        drafts the model agrees with are kept, and the first row that disagrees
        yields the model's own token instead.
        """
        limit = self.max_tokens(sequence)
        control = sequence.speculation if draft else None
        if control is not None:
            control.drafted += len(draft)  # counted as tokens arrive, so a Finished event includes them
        emitted = 0

        def emit(token: int) -> bool:
            nonlocal emitted
            if control is not None and emitted < len(draft) and token == draft[emitted]:
                control.accepted += 1
            emitted += 1
            return sequence.take(token, self.end_model.eos_token_ids, limit)

        try:
            accepted = accept_longest_prefix(draft, rows, sequence.pick, emit)
            if control is not None:
                if not sequence.finished:
                    sequence.keep_drafts(accepted)
                control.adapt(len(draft), accepted)
                self._count_speculation(len(draft), accepted)
        except Exception as error:  # noqa: BLE001 - sampling, grammar or text of one sequence: it alone fails
            log.exception("sequence %s failed after its step", sequence.sequence_id)
            what = str(error) if isinstance(error, SamplingError) else type(error).__name__
            fail(sequence, f"generating the next token failed: {what}")

    def _count_speculation(self, drafted: int, accepted: int) -> None:
        with self._totals_lock:
            self.tokens_drafted += drafted
            self.tokens_accepted += accepted
        if self.on_speculation is not None:
            self.on_speculation(drafted, accepted)
