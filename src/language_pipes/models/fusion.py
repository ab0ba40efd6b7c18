"""Fused input projections: one matrix product for q, k and v, and one for gate and up.

A decode step multiplies a row or a few by many small weight matrices. On CPU
each product also pays a fixed dispatch and thread wake-up, so three calls for
q, k and v cost far more than one call over their stacked weights (measured on
the default model, one row: 229 µs against 140 µs; gate and up: 317 against
233 µs). The results are the same numbers: each output element is the same dot
product, and the kernels give bit-identical values (checked in the tests).

transformers' attention and MLP modules call these projections one after
another on the same input. Rather than rewriting their forward methods, each
projection is replaced by a :class:`FusedProjection` of one :class:`_Group`:
the first call computes every member's output from the stacked weight, and
the others, called with the same input tensor, take their share. A member
called with another input computes just its own slice. Each member's weight
is a view of the stacked one. The stacked tensor itself is a copy out of the
memory-mapped checkpoint, so these weights take process memory instead of
page cache (~120 MB for the default model).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy
import torch
from torch import nn
from torch.nn import functional

# Projection groups that transformers' decoder layers apply to one shared input.
GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class _Group:
    """The stacked weight of some projections and, per thread, the outputs not yet handed out."""

    def __init__(
        self,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        sizes: list[int],
        project: nn.Module | None = None,
    ) -> None:
        # ``project`` (a quantized linear over the stacked weight) replaces ``weight`` and ``bias``.
        self.weight, self.bias, self.sizes, self.project = weight, bias, sizes, project
        self._pending = threading.local()  # lanes may run the same layers on two threads

    def output(self, index: int, inputs: torch.Tensor) -> torch.Tensor:
        pending: dict[int, torch.Tensor] | None = getattr(self._pending, "outputs", None)
        if pending is None or getattr(self._pending, "inputs", None) is not inputs or index not in pending:
            if self.project is not None:
                stacked = self.project(inputs)
            else:
                stacked = functional.linear(inputs, self.weight, self.bias)
            parts = stacked.split(self.sizes, dim=-1)
            pending = {i: part.contiguous() for i, part in enumerate(parts)}
            self._pending.inputs, self._pending.outputs = inputs, pending
        output = pending.pop(index)
        if not pending:
            self._pending.inputs = self._pending.outputs = None  # everything handed out: drop the references
        return output


class FusedProjection(nn.Module):
    """Stands where one ``nn.Linear`` of a group stood; its weight is a view of the group's."""

    def __init__(self, group: _Group, index: int, linear: nn.Linear) -> None:
        super().__init__()
        self.group, self.index = group, index
        self.in_features, self.out_features = linear.in_features, linear.out_features
        start = sum(group.sizes[:index])
        if group.weight is not None:
            self.weight = nn.Parameter(group.weight[start : start + linear.out_features], requires_grad=False)
        else:  # quantized: the group's module holds the packed weight (registered on the first member)
            self.project = group.project if index == 0 else None

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.group.output(self.index, inputs)


def fuse_projections(layer: nn.Module) -> int:
    """Fuse every projection group found under ``layer``; returns how many groups were fused."""
    fused = 0
    for module in list(layer.modules()):
        for names in GROUPS:
            linears = [getattr(module, name, None) for name in names]
            if _fusable(linears):
                _fuse(module, names, linears)  # type: ignore[arg-type]
                fused += 1
    return fused


def fuse_quantized_groups(
    layer: nn.Module,
    quantize: Callable[[torch.Tensor, torch.Tensor | None, str], nn.Module],
) -> int:
    """Like :func:`fuse_projections`, but each group's stacked weight becomes ``quantize(w, b, name)``.

    The float weights are dropped once packed. Returns how many linears were replaced.
    """
    replaced = 0
    for module_name, module in list(layer.named_modules()):
        for names in GROUPS:
            linears = [getattr(module, name, None) for name in names]
            if not _fusable(linears):
                continue
            weight = _stack([linear.weight for linear in linears])  # type: ignore[union-attr]
            biases = [linear.bias for linear in linears]  # type: ignore[union-attr]
            bias = _stack(biases) if all(b is not None for b in biases) else None  # type: ignore[arg-type]
            label = f"{module_name + '.' if module_name else ''}{'+'.join(names)}"
            sizes = [linear.out_features for linear in linears]  # type: ignore[union-attr]
            group = _Group(None, None, sizes, quantize(weight, bias, label))
            del weight, bias
            for index, (name, linear) in enumerate(zip(names, linears, strict=True)):
                setattr(module, name, FusedProjection(group, index, linear))  # type: ignore[arg-type]
            replaced += len(names)
    return replaced


def _fusable(linears: list[object]) -> bool:
    if not all(type(linear) is nn.Linear for linear in linears):
        return False
    first: nn.Linear = linears[0]  # type: ignore[assignment]
    return all(
        linear.in_features == first.in_features  # type: ignore[attr-defined]
        and linear.weight.dtype == first.weight.dtype  # type: ignore[attr-defined]
        and linear.weight.device == first.weight.device  # type: ignore[attr-defined]
        and (linear.bias is None) == (first.bias is None)  # type: ignore[attr-defined]
        for linear in linears
    )


def _fuse(module: nn.Module, names: tuple[str, ...], linears: list[nn.Linear]) -> None:
    weight = _stack([linear.weight for linear in linears])
    biases = [linear.bias for linear in linears]
    bias = _stack(biases) if all(b is not None for b in biases) else None  # type: ignore[arg-type]
    group = _Group(weight, bias, [linear.out_features for linear in linears])
    for index, (name, linear) in enumerate(zip(names, linears, strict=True)):
        setattr(module, name, FusedProjection(group, index, linear))


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat`` along dim 0, on CPU without an OpenMP team on the loading thread.

    libgomp gives every thread that starts a parallel region a team of its own,
    and once the process holds more OpenMP threads than cores it stops spinning
    between kernels altogether: the compute thread's steps then run about 1.5x
    slower. Loading runs on helper threads, so it copies with numpy (one thread).
    """
    if tensors[0].device.type != "cpu":
        return torch.cat([t.detach() for t in tensors])
    raw = [t.detach().contiguous().view(torch.uint8).numpy() for t in tensors]
    return torch.from_numpy(numpy.concatenate(raw)).view(tensors[0].dtype)
