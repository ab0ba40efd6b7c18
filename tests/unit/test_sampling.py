"""Sampling exactly as the seed states: temperature -> min_p -> top_p -> top_k, penalties, seeds, masks."""

from __future__ import annotations

import math

import pytest
import torch

from language_pipes.engine.sampling import (
    SamplingError,
    apply_penalties,
    filter_probabilities,
    generator_for,
    make_generator,
    pick_token,
)
from language_pipes.engine.types import SamplingParams

DRAWS = 400


def logits_for(probabilities: list[float], temperature: float = 1.0) -> torch.Tensor:
    """Logits whose softmax at ``temperature`` is exactly ``probabilities``."""
    return torch.tensor([math.log(p) * temperature for p in probabilities])


def support_of_draws(
    logits: torch.Tensor, params: SamplingParams, generated: list[int] | None = None
) -> set[int]:
    generator = make_generator(1234)
    return {pick_token(logits, params, generated or [], None, generator) for _ in range(DRAWS)}


PROBABILITIES = [0.30, 0.25, 0.20, 0.15, 0.10]

# (params, support in the seed's order, support if the two filters ran the other way round)
ORDER_CASES = {
    # min_p first keeps {0,1,2} (>= 0.18), renormalised top_p 0.65 then keeps {0,1};
    # top_p first would keep {0,1,2} and min_p would then remove nothing.
    "min_p before top_p": (SamplingParams(min_p=0.6, top_p=0.65), {0, 1}, {0, 1, 2}),
    # top_p first keeps {0,1,2} (mass before each < 0.6) and top_k 3 keeps them all;
    # top_k first would renormalise {0,1,2} to (.4, .33, .27) and top_p 0.6 would keep {0,1}.
    "top_p before top_k": (SamplingParams(top_p=0.6, top_k=3), {0, 1, 2}, {0, 1}),
    # min_p 0.25 keeps {0,1,2,3} (>= 0.075), top_k 2 then keeps the two most likely.
    "min_p then top_k": (SamplingParams(min_p=0.25, top_k=2), {0, 1}, {0, 1}),
}


@pytest.mark.parametrize("case", list(ORDER_CASES))
def test_filters_run_in_the_documented_order(case: str) -> None:
    params, expected, other_order = ORDER_CASES[case]
    filtered = filter_probabilities(torch.tensor(PROBABILITIES), params)
    assert set(filtered.nonzero().flatten().tolist()) == expected
    assert math.isclose(float(filtered.sum()), 1.0, rel_tol=1e-6)
    # The surviving tokens keep their relative odds.
    kept = sorted(expected)
    assert torch.allclose(
        filtered[kept], torch.tensor(PROBABILITIES)[kept] / sum(PROBABILITIES[i] for i in kept)
    )
    # And drawing really samples from exactly that support.
    assert support_of_draws(logits_for(PROBABILITIES), params) == expected
    if case != "min_p then top_k":
        assert expected != other_order  # the case really distinguishes the orders


def test_temperature_scales_before_min_p() -> None:
    """min_p 0.5 on (.5, .3, .2) keeps {0, 1}; at temperature 2 the flatter distribution keeps all three."""
    logits = logits_for([0.5, 0.3, 0.2])
    assert support_of_draws(logits, SamplingParams(temperature=1.0, min_p=0.5)) == {0, 1}
    assert support_of_draws(logits, SamplingParams(temperature=2.0, min_p=0.5)) == {0, 1, 2}


def test_temperature_sharpens_and_flattens() -> None:
    logits = torch.tensor([1.0, 0.9])
    generator = make_generator(5)

    def share_of_first(temperature: float) -> float:
        params = SamplingParams(temperature=temperature)
        picks = [pick_token(logits, params, [], None, generator) for _ in range(2000)]
        return picks.count(0) / len(picks)

    assert share_of_first(0.05) > 0.8  # e^(0.1/0.05) = 7.4 : 1
    assert 0.42 < share_of_first(1.0) < 0.63  # e^0.1 = 1.1 : 1
    assert 0.40 < share_of_first(20.0) < 0.60


def test_top_p_keeps_the_smallest_set_reaching_the_mass() -> None:
    def kept(top_p: float) -> list[int]:
        filtered = filter_probabilities(torch.tensor(PROBABILITIES), SamplingParams(top_p=top_p))
        return filtered.nonzero().flatten().tolist()

    assert kept(0.5) == [0, 1]
    assert kept(0.2) == [0]
    assert kept(0.9) == [0, 1, 2, 3]
    assert kept(1.0) == [0, 1, 2, 3, 4]


def test_greedy_is_argmax() -> None:
    logits = torch.tensor([0.1, 2.5, -1.0, 2.4])
    assert pick_token(logits, SamplingParams(temperature=0.0), [], None, None) == 1
    assert SamplingParams(temperature=0.0).greedy


def test_top_k_one_is_greedy_at_any_temperature() -> None:
    logits = torch.tensor([0.1, 2.5, -1.0, 2.4])
    params = SamplingParams(temperature=1.5, top_k=1)
    assert params.greedy
    assert support_of_draws(logits, params) == {1}


def test_penalties_change_the_logits_by_the_documented_amounts() -> None:
    logits = torch.zeros(6)
    generated = [1, 1, 3, 1]
    presence = apply_penalties(logits, generated, SamplingParams(presence_penalty=0.5))
    assert presence.tolist() == [0.0, -0.5, 0.0, -0.5, 0.0, 0.0]
    frequency = apply_penalties(logits, generated, SamplingParams(frequency_penalty=0.25))
    assert frequency.tolist() == [0.0, -0.75, 0.0, -0.25, 0.0, 0.0]
    both = apply_penalties(logits, generated, SamplingParams(presence_penalty=0.5, frequency_penalty=0.25))
    assert both.tolist() == [0.0, -1.25, 0.0, -0.75, 0.0, 0.0]
    negative = apply_penalties(logits, generated, SamplingParams(presence_penalty=-1.0))
    assert negative.tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    assert torch.equal(apply_penalties(logits, [], SamplingParams(presence_penalty=2.0)), logits)


def test_penalties_change_the_picked_token() -> None:
    logits = torch.tensor([1.0, 1.3, 0.0])
    greedy = SamplingParams(temperature=0.0)
    assert pick_token(logits, greedy, [1], None, None) == 1
    assert pick_token(logits, SamplingParams(temperature=0.0, presence_penalty=0.5), [1], None, None) == 0
    assert pick_token(logits, SamplingParams(temperature=0.0, frequency_penalty=0.2), [1, 1], None, None) == 0
    assert pick_token(logits, SamplingParams(temperature=0.0, frequency_penalty=0.2), [1], None, None) == 1
    # A negative presence penalty pulls an earlier token up past the leader.
    assert pick_token(logits, SamplingParams(temperature=0.0, presence_penalty=-2.0), [2], None, None) == 2


def test_same_seed_gives_the_same_draws() -> None:
    logits = torch.zeros(1000)
    params = SamplingParams(temperature=1.0, seed=42)

    def draws(seed: int) -> list[int]:
        generator = make_generator(seed)
        return [pick_token(logits, params, [], None, generator) for _ in range(50)]

    assert draws(42) == draws(42)
    assert draws(42) != draws(43)
    unseeded_a, unseeded_b = make_generator(None), make_generator(None)
    picks_a = [pick_token(logits, params, [], None, unseeded_a) for _ in range(50)]
    picks_b = [pick_token(logits, params, [], None, unseeded_b) for _ in range(50)]
    assert picks_a != picks_b


def test_constraint_mask_is_respected() -> None:
    logits = torch.tensor([5.0, 4.0, 0.0, 1.0, 3.0, 0.5])
    allowed = torch.tensor([False, False, False, True, False, True])
    assert pick_token(logits, SamplingParams(temperature=0.0), [], allowed, None) == 3
    generator = make_generator(3)
    picks = {
        pick_token(logits, SamplingParams(temperature=5.0), [], allowed, generator) for _ in range(DRAWS)
    }
    assert picks == {3, 5}
    # A mask longer than the logits (padded vocabulary) is cut to size.
    padded = torch.cat([allowed, torch.ones(4, dtype=torch.bool)])
    assert pick_token(logits, SamplingParams(temperature=0.0), [], padded, None) == 3


@pytest.mark.parametrize("temperature", [1e-40, 1e-12, 1e-6])
def test_a_vanishing_temperature_is_greedy_not_nan(temperature: float) -> None:
    logits = torch.tensor([1.0, 7.5, 3.0, 7.4])
    generator = make_generator(5)
    params = SamplingParams(temperature=temperature, top_p=0.9)
    assert {pick_token(logits, params, [], None, generator) for _ in range(20)} == {1}


def test_a_small_temperature_with_large_logits_stays_finite() -> None:
    """Just above the greedy cut, dividing huge logits would overflow without the shift by the maximum."""
    logits = torch.tensor([3.0e30, 2.9e30, -1.0e30])
    picks = {
        pick_token(logits, SamplingParams(temperature=1e-4), [], None, make_generator(1)) for _ in range(20)
    }
    assert picks == {0}


def test_nan_logits_never_win_and_inf_counts_as_the_largest() -> None:
    nan = float("nan")
    logits = torch.tensor([nan, 1.0, 2.0, nan])
    assert pick_token(logits, SamplingParams(temperature=0.0), [], None, None) == 2
    generator = make_generator(2)
    picks = {pick_token(logits, SamplingParams(temperature=1.0), [], None, generator) for _ in range(DRAWS)}
    assert picks == {1, 2}
    with_inf = torch.tensor([1.0, float("inf"), nan, 3.0])
    assert pick_token(with_inf, SamplingParams(temperature=0.0), [], None, None) == 1
    assert pick_token(with_inf, SamplingParams(temperature=1.0), [], None, make_generator(2)) == 1


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_no_possible_token_is_a_sampling_error_not_token_zero(temperature: float) -> None:
    logits = torch.tensor([5.0, float("nan"), 1.0])
    nothing_allowed = torch.tensor([False, True, False])
    with pytest.raises(SamplingError):
        pick_token(logits, SamplingParams(temperature=temperature), [], nothing_allowed, make_generator(1))


def test_the_draw_uses_the_generator_of_the_logits_device() -> None:
    """On a CUDA end model the generator must live on cuda:N; on CPU logits it is the CPU one."""
    random = make_generator(9)
    logits = torch.zeros(50)
    on_device = random.for_device(logits.device)
    assert on_device.device == logits.device
    assert generator_for(random, logits.device) is on_device
    before = on_device.get_state().clone()
    pick_token(logits, SamplingParams(temperature=1.0), [], torch.ones(50, dtype=torch.bool), random)
    assert not torch.equal(on_device.get_state(), before)  # the draw advanced that very generator
    assert make_generator(9).for_device(logits.device).initial_seed() == 9
