"""Turning logits into the next token, exactly as the README's sampling section states.

Order for ``temperature > 0``: penalties, temperature scaling, min-p, top-p,
top-k, then a draw from the remaining distribution. ``temperature == 0`` is
greedy (after penalties and constraints).
"""

from __future__ import annotations

import torch

from language_pipes.engine.types import SamplingParams


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


def pick_token(
    logits: torch.Tensor,
    params: SamplingParams,
    generated: list[int],
    allowed: torch.Tensor | None,
    generator: torch.Generator | None,
) -> int:
    """The next token for one sequence from its float32 logits row ``[vocab]``."""
    logits = apply_penalties(logits, generated, params)
    if allowed is not None:
        logits = logits.masked_fill(~allowed[: logits.shape[-1]], float("-inf"))
    if params.greedy:
        return int(logits.argmax())
    probabilities = torch.softmax(logits / params.temperature, dim=-1)
    probabilities = filter_probabilities(probabilities, params)
    return int(torch.multinomial(probabilities, 1, generator=generator))


def make_generator(seed: int | None) -> torch.Generator:
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
