"""Turning logits into the next token, exactly as the README's sampling section states.

Order for ``temperature > 0``: penalties, temperature scaling, min-p, top-p,
top-k, then a draw from the remaining distribution. A temperature below
:data:`GREEDY_TEMPERATURE` (0 included) is greedy (after penalties and
constraints).

Sampling is finite-safe: NaN logits never win, ``+inf`` counts as the
largest logit, and the logits are shifted by their maximum before the
temperature divides them, so no temperature overflows the softmax. When no
token is left at all (every logit NaN or masked), :class:`SamplingError`
names the problem; it belongs to that one sequence.
"""

from __future__ import annotations

import secrets

import torch

from language_pipes.engine.types import SamplingParams


class SamplingError(ValueError):
    """No token can be picked from this row (every candidate is NaN or disallowed)."""


class SequenceRandom:
    """One sequence's random stream: a seed, and a generator on each device its logits live on.

    torch draws with a generator on the tensor's own device only, so an end
    model on ``cuda:N`` gets a generator there, seeded like the CPU one.
    """

    def __init__(self, seed: int | None) -> None:
        self.seed = secrets.randbits(63) if seed is None else seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def for_device(self, device: torch.device) -> torch.Generator:
        generator = self._generators.get(device)
        if generator is None:
            generator = torch.Generator(device=device)
            generator.manual_seed(self.seed)
            self._generators[device] = generator
        return generator


def make_generator(seed: int | None) -> SequenceRandom:
    return SequenceRandom(seed)


def apply_penalties(logits: torch.Tensor, generated: list[int], params: SamplingParams) -> torch.Tensor:
    """Presence and frequency penalties over the tokens generated so far (one row)."""
    if not generated or (params.presence_penalty == 0.0 and params.frequency_penalty == 0.0):
        return logits
    ids = torch.tensor(generated, dtype=torch.long, device=logits.device)
    counts = torch.bincount(ids, minlength=logits.shape[-1])[: logits.shape[-1]].to(logits.dtype)
    logits = logits - params.frequency_penalty * counts
    return logits - params.presence_penalty * (counts > 0).to(logits.dtype)


def filter_probabilities(probabilities: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """min-p, then top-p, then top-k on one row of probabilities; renormalised after each."""
    if params.min_p > 0.0:
        threshold = params.min_p * probabilities.max()
        probabilities = _renormalise(torch.where(probabilities >= threshold, probabilities, 0.0))
    if params.top_p < 1.0:
        sorted_probs, order = probabilities.sort(descending=True)
        mass_before = sorted_probs.cumsum(-1) - sorted_probs
        keep_sorted = mass_before < params.top_p
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        probabilities = _renormalise(torch.where(keep, probabilities, 0.0))
    if params.top_k > 0 and params.top_k < probabilities.shape[-1]:
        kth = probabilities.topk(params.top_k).values[-1]
        probabilities = _renormalise(torch.where(probabilities >= kth, probabilities, 0.0))
    return probabilities


def _renormalise(probabilities: torch.Tensor) -> torch.Tensor:
    return probabilities / probabilities.sum()


def finite_logits(logits: torch.Tensor) -> torch.Tensor:
    """NaN becomes ``-inf`` and ``+inf`` the largest float; refuses a row with no candidate left."""
    largest = torch.finfo(logits.dtype).max
    logits = torch.nan_to_num(logits, nan=float("-inf"), posinf=largest, neginf=float("-inf"))
    if not bool(torch.isfinite(logits).any()):
        raise SamplingError("no token can be sampled: every logit is NaN or disallowed")
    return logits


def pick_token(
    logits: torch.Tensor,
    params: SamplingParams,
    generated: list[int],
    allowed: torch.Tensor | None,
    generator: SequenceRandom | torch.Generator | None,
) -> int:
    """The next token for one sequence from its float32 logits row ``[vocab]``.

    ``allowed`` (a constraint's mask) and the random generator follow the
    logits' device, wherever the mask was built.
    """
    logits = apply_penalties(logits, generated, params)
    if allowed is not None:
        mask = allowed[: logits.shape[-1]].to(logits.device)
        logits = logits.masked_fill(~mask, float("-inf"))
    logits = finite_logits(logits)
    if params.greedy:
        return int(logits.argmax())
    shifted = logits - logits.max()  # every value <= 0: dividing by a tiny temperature cannot overflow
    probabilities = torch.softmax(shifted / params.temperature, dim=-1)
    probabilities = filter_probabilities(probabilities, params)
    return int(torch.multinomial(probabilities, 1, generator=generator_for(generator, probabilities.device)))


def generator_for(
    generator: SequenceRandom | torch.Generator | None, device: torch.device
) -> torch.Generator | None:
    """The generator to draw with on ``device`` (a plain torch.Generator is used as it is)."""
    if isinstance(generator, SequenceRandom):
        return generator.for_device(device)
    return generator
