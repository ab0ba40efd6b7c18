"""The split-equivalence checks every architecture's tests run (tests/unit/test_architectures*.py).

Each check loads a tiny model folder (tests/support/tiny_models.py) as an end
model plus layer segments in this process and compares it with transformers'
own model in one process: logits at every step, greedy tokens against
``generate``, and chunked prefill packed beside another sequence against each
sequence alone.
"""

from __future__ import annotations

from pathlib import Path

import torch

from support.tiny_models import open_split, reference_model, reference_steps

DECODE_STEPS = 10
PROMPT = [1, 17, 42, 99, 5, 63, 128, 7, 77, 31, 150, 12, 88, 3]  # longer than the sliding windows
OTHER_PROMPT = [1, 9, 140, 33, 61, 4, 120, 45, 18]
ATOL = 2e-4  # float32 on both sides: only summation order differs
PREFILL_CHUNK = 5

# Split points as the segment boundaries after the end model's local layers (4 layers in total).
SPLITS: dict[str, tuple[int, ...]] = {
    "local1+1+2": (1, 2, 4),
    "local0+2+2": (0, 2, 4),
    "local1+3": (1, 4),
}


def check_logits_at_every_step(folder: Path, boundaries: tuple[int, ...], label: str) -> None:
    """Prefill then ``DECODE_STEPS`` greedy steps: the split logits equal transformers' at each one."""
    ours = open_split(folder, boundaries, torch.float32)
    reference = reference_model(folder)
    position, feed = 0, list(PROMPT)
    for step, expected in enumerate(reference_steps(reference, PROMPT, DECODE_STEPS)):
        got = ours.step(["s"], [position], [feed])
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-4, msg=f"{label} step {step}")
        position += len(feed)
        feed = [int(expected[-1].argmax())]
    assert position == len(PROMPT) + DECODE_STEPS


def check_greedy_matches_generate(folder: Path) -> None:
    """Greedy tokens of a three-segment split equal ``generate``'s, and are not one repeated token."""
    ours = open_split(folder, (1, 2, 4), torch.float32)
    reference = reference_model(folder)
    with torch.inference_mode():
        generated = reference.generate(torch.tensor([PROMPT]), do_sample=False, max_new_tokens=DECODE_STEPS)
    expected = generated[0, len(PROMPT) :].tolist()

    tokens = ours.greedy("g", PROMPT, DECODE_STEPS)
    assert tokens == expected
    assert len(set(tokens)) > 1, "a constant output would not show that the models agree"


def check_chunked_prefill_in_a_packed_batch(folder: Path) -> None:
    """Prefill in chunks (crossing the sliding windows) while another sequence shares each step."""
    alone = open_split(folder, (1, 3, 4), torch.float32)
    expected = alone.step(["a"], [0], [PROMPT])
    expected_other = alone.step(["b"], [0], [OTHER_PROMPT])

    packed = open_split(folder, (1, 3, 4), torch.float32)
    rows: list[torch.Tensor] = []
    other_rows: list[torch.Tensor] = []
    other_fed = 0
    for start in range(0, len(PROMPT), PREFILL_CHUNK):
        chunk = PROMPT[start : start + PREFILL_CHUNK]
        other_chunk = OTHER_PROMPT[other_fed : other_fed + 3]
        if other_chunk:
            logits = packed.step(["a", "b"], [start, other_fed], [chunk, other_chunk])
            rows.append(logits[: len(chunk)])
            other_rows.append(logits[len(chunk) :])
            other_fed += len(other_chunk)
        else:
            rows.append(packed.step(["a"], [start], [chunk]))
    torch.testing.assert_close(torch.cat(rows), expected, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(torch.cat(other_rows), expected_other, atol=ATOL, rtol=1e-4)
