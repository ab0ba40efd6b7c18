"""Batch-invariant execution: a sequence's numbers do not depend on what shares its step.

CPU matrix kernels take a different path for a single row (a matrix-vector
product) than for two or more, and the two round differently in bfloat16. So a
sequence decoded alone and the same sequence decoded beside others can drift
apart at near-ties. With ``batch_invariant = true`` every linear layer sees at
least two rows (a lone row is duplicated, the copy dropped), and attention
runs one query row at a time over exactly the keys that row sees
(models/attention.py), so a row's attention is the same call whether it comes
in a decode step, a prefill chunk or a replay; prefill chunks also start at
fixed offsets. The linear layers' multi-row kernels round each row
independently of the others on both AVX-512 (oneDNN) and AVX2 (emulated bf16);
attention kernels did not on AVX2, which is why attention goes row by row.
Greedy output then depends only on the sequence itself, which
is what lets a replay after a node loss, or a run under load, reproduce an
undisturbed run exactly. It costs single-stream decode speed, and a lone
sequence no longer follows transformers' single-row kernels bit for bit.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn import functional


def make_batch_invariant(module: nn.Module) -> None:
    """Route every ``nn.Linear`` under ``module`` through the multi-row kernel."""
    for linear in module.modules():
        if isinstance(linear, nn.Linear):
            linear.forward = _multi_row_forward(linear.forward)  # type: ignore[method-assign]


def _multi_row_forward(forward: object) -> object:
    def padded(inputs: torch.Tensor) -> torch.Tensor:
        if inputs.dim() >= 2 and inputs.shape[-2] == 1:
            return forward(torch.cat([inputs, inputs], dim=-2))[..., :1, :]  # type: ignore[operator]
        return forward(inputs)  # type: ignore[operator]

    return padded


# Weight shapes (out, in) the probe multiplies: a small model's attention and MLP projections.
_PROBE_SHAPES = ((960, 576), (1536, 576), (576, 1536))
_PROBE_ROWS = 7


@functools.cache
def linear_rows_independent(dtype: torch.dtype, device_type: str = "cpu") -> bool:
    """Whether a linear layer gives a row the same bits alone as among other rows, on this machine.

    True for bf16 on AVX2 CPUs (emulated bf16: one kernel per row either way);
    AVX-512 CPUs with native bf16 take a matrix-vector kernel for one row that
    rounds differently. Where this is False, the rows of a decode run
    (speculative verification) go through the layers one at a time
    (models/segment.py) so they still equal plain decode steps.
    """
    generator = torch.Generator().manual_seed(0)
    for out_features, in_features in _PROBE_SHAPES:
        weight = (torch.randn(out_features, in_features, generator=generator) * 0.05).to(device_type, dtype)
        rows = torch.randn(1, _PROBE_ROWS, in_features, generator=generator).to(device_type, dtype)
        with torch.inference_mode():
            together = functional.linear(rows, weight)
            for row in range(_PROBE_ROWS):
                if not torch.equal(
                    functional.linear(rows[:, row : row + 1], weight), together[:, row : row + 1]
                ):
                    return False
    return True
