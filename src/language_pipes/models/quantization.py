"""Weight-only int8 and int4 linear layers on torch's own CPU (and CUDA) kernels.

``data_type`` names how a model part keeps its weights (see :func:`weight_format`):
``bfloat16`` / ``float16`` / ``float32`` store them as that dtype; ``int8`` and
``int4`` quantize every decoder-layer linear (and, on an end model, the output
head) while the layer is loaded, and keep activations in bfloat16, so hidden
states cross the wire in bfloat16 whatever a node's weights are.

* int8: symmetric, one scale per output channel; ``aten._weight_int8pack_mm``.
* int4: asymmetric, one scale and zero per ``group`` input columns (32, or 64
  when 32 does not divide the width); torch's tinygemm
  (``_weight_int4pack_mm_for_cpu`` on CPU, ``_weight_int4pack_mm`` on CUDA).

Measured on an AVX2-only CPU (emulated bf16 matmul, benchmarks/quantization.py):
both kernels beat bf16 ``F.linear`` for every decoder shape of the default model
at 16 and 256 rows (about 4x), and beat or match it at 1 row, so they always run
there. Where bf16 has native matrix units (AVX-512 / AMX, CUDA) a dense product
may win for large prefill chunks: from :data:`DENSE_FROM_ROWS_CPU` /
:data:`DENSE_FROM_ROWS_CUDA` rows int8 weights are dequantized for that call
instead (CPU: not enabled anywhere until measured). int4's packed layout is
kernel-private, so int4 always uses its kernel. Both kernels compute each row
independently of the others (tested), so batch-invariant mode stays exact.

A linear that cannot be packed (a width the group does not divide, a row
count tinygemm cannot tile) raises :class:`QuantizationError` naming it:
nothing silently stays in bfloat16.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy
import torch
from torch import nn
from torch.nn import functional

FLOAT_DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}
# Finest first: on the default model group 32 gives perplexity 27.2 on the first 512 tokens of
# the benchmark text against 39.6 for group 64 (bf16 about 21); llama.cpp's Q4_1 uses 32 too.
INT4_GROUP_SIZES = (32, 64)
INT4_ROWS_MULTIPLE = 16  # tinygemm tiles output rows by 16
# Rows from which a dense product of dequantized int8 weights is used instead of the kernel,
# by CPU capability. None for all so far: on AVX2 (measured, benchmarks/quantization.py) the
# kernels win at every shape and row count; AVX-512 / AMX are unmeasured, so they keep the
# kernels too (which also keeps batch-invariant mode exact: the kernels are row-invariant).
DENSE_FROM_ROWS_CPU: dict[str, int] = {}
DENSE_FROM_ROWS_CUDA = 64


class QuantizationError(ValueError):
    """A weight that the chosen format cannot pack; the message names the module."""


@dataclass(frozen=True)
class WeightFormat:
    """How a model part stores its linear weights and which dtype its activations use."""

    name: str
    activation_dtype: torch.dtype
    bits: int | None = None  # None: float weights at activation_dtype

    @property
    def head_bits(self) -> int | None:
        """The output head's bits: int4 end models keep an int8 head (the head is the most sensitive
        matrix; int4 there cost about 5 % more perplexity on the default model)."""
        return None if self.bits is None else max(self.bits, 8)

    @property
    def quantized(self) -> bool:
        return self.bits is not None

    def linear_nbytes(self, out_features: int, in_features: int) -> int:
        """Bytes one ``[out, in]`` linear weight takes in this format (packing overheads included)."""
        element = torch.empty((), dtype=self.activation_dtype).element_size()
        if self.bits is None:
            return out_features * in_features * element
        if self.bits == 8:
            return out_features * in_features + out_features * element
        group = int4_group_size(in_features) or INT4_GROUP_SIZES[-1]
        return out_features * in_features // 2 + 2 * (in_features // group) * out_features * element


def weight_format(data_type: str | None, device: torch.device | str = "cpu") -> WeightFormat:
    """The format a config's ``data_type`` names; unset: bfloat16 on cpu, float16 elsewhere."""
    device = torch.device(device)
    if data_type is None:
        data_type = "bfloat16" if device.type == "cpu" else "float16"
    if data_type in FLOAT_DTYPES:
        return WeightFormat(data_type, FLOAT_DTYPES[data_type])
    if data_type == "int8":
        return WeightFormat("int8", torch.bfloat16, 8)
    if data_type == "int4":
        return WeightFormat("int4", torch.bfloat16, 4)
    raise ValueError(f"unknown data_type {data_type!r}")


def int4_group_size(in_features: int) -> int | None:
    """The largest supported int4 group that divides ``in_features`` (None: none does)."""
    return next((group for group in INT4_GROUP_SIZES if in_features % group == 0), None)


def _dense_from_rows(device: torch.device) -> int | None:
    if device.type == "cuda":
        return DENSE_FROM_ROWS_CUDA
    return DENSE_FROM_ROWS_CPU.get(torch.backends.cpu.get_cpu_capability())


class QuantizedLinear(nn.Module):
    """A weight-only quantized stand-in for ``nn.Linear`` (same ``in_features``/``out_features``)."""

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int = 0) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size = bits, group_size
        self.bias: torch.Tensor | None = None
        self.dense_from_rows: int | None = None

    @classmethod
    def from_weight(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        bits: int,
        activation_dtype: torch.dtype = torch.bfloat16,
        name: str = "linear",
    ) -> QuantizedLinear:
        """Quantize a float ``[out, in]`` weight (the float tensor is not kept)."""
        out_features, in_features = weight.shape
        device = weight.device
        if bits == 8:
            module = cls(in_features, out_features, 8)
            packed, scales = quantize_int8(weight)
            module.register_buffer("packed", packed)
            module.register_buffer("scales", scales.to(activation_dtype))
        elif bits == 4:
            group = int4_group_size(in_features)
            if group is None or out_features % INT4_ROWS_MULTIPLE:
                raise QuantizationError(
                    f"{name}: cannot pack a [{out_features}, {in_features}] weight as int4 "
                    f"(needs a width divisible by one of {INT4_GROUP_SIZES} "
                    f"and rows divisible by {INT4_ROWS_MULTIPLE})"
                )
            module = cls(in_features, out_features, 4, group)
            packed, scales_and_zeros = quantize_int4(weight, group)
            module.register_buffer("packed", packed)
            module.register_buffer("scales_and_zeros", scales_and_zeros)
        else:
            raise QuantizationError(f"{name}: unsupported bit width {bits}")
        if bias is not None:
            module.bias = nn.Parameter(bias.detach().to(activation_dtype), requires_grad=False)
        module.dense_from_rows = _dense_from_rows(device)
        return module

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        shape = inputs.shape
        rows = inputs.reshape(-1, self.in_features)
        if self.bits == 8:
            if self.dense_from_rows is not None and rows.shape[0] >= self.dense_from_rows:
                output = functional.linear(rows, self.dequantized(rows.dtype))
            elif rows.device.type == "cpu":
                output = torch.ops.aten._weight_int8pack_mm(rows, self.packed, self.scales.to(rows.dtype))
            else:  # no int8 weight-only kernel off CPU in eager torch: dequantize per call
                output = functional.linear(rows, self.dequantized(rows.dtype))
        else:
            rows = rows.to(self.scales_and_zeros.dtype).contiguous()
            if rows.device.type == "cpu":
                output = torch.ops.aten._weight_int4pack_mm_for_cpu(
                    rows, self.packed, self.group_size, self.scales_and_zeros
                )
            else:
                output = torch.ops.aten._weight_int4pack_mm(
                    rows, self.packed, self.group_size, self.scales_and_zeros
                )
            output = output.to(inputs.dtype)
        if self.bias is not None:
            output = output + self.bias
        return output.reshape(*shape[:-1], self.out_features)

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight the kernel computes with (int8 only; tests use :func:`dequantize_int4`)."""
        if self.bits != 8:
            raise NotImplementedError("int4 weights are kept only in the kernel's packed layout")
        return (self.packed.to(dtype) * self.scales.to(dtype)[:, None]).to(dtype)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.buffers()) + (
            0 if self.bias is None else self.bias.numel() * self.bias.element_size()
        )

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.bits == 4 else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, int{self.bits}{group}"


def _float32_array(tensor: torch.Tensor) -> numpy.ndarray:
    """``tensor`` as a float32 numpy array, converted without a torch kernel (see :func:`quantize_int8`)."""
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:  # bf16 is the top half of a float32
        return (tensor.view(torch.int16).numpy().astype(numpy.int32) << 16).view(numpy.float32)
    return tensor.numpy().astype(numpy.float32)


def _bfloat16_tensor(array: numpy.ndarray) -> torch.Tensor:
    """Round float32 to bfloat16 (to nearest, ties to even) in numpy."""
    bits = numpy.ascontiguousarray(array, dtype=numpy.float32).view(numpy.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(numpy.uint16)
    return torch.from_numpy(rounded.view(numpy.int16)).view(torch.bfloat16)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch kernels on this thread alone (torch's thread count is per thread under OpenMP)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# Packing works through a weight a few rows at a time, so its float32 temporaries stay small
# (about this many bytes each) and are reused from the heap: with whole matrices they were
# several MiB each, every one a fresh mapping while layers load (see models/heap.py).
CHUNK_BYTES = 64 * 1024


def _row_chunks(out_features: int, in_features: int) -> Iterator[slice]:
    rows = max(1, CHUNK_BYTES // (4 * in_features))
    for start in range(0, out_features, rows):
        yield slice(start, min(start + rows, out_features))


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: ``weight ≈ packed * scales[:, None]``.

    The arithmetic runs in numpy, single-threaded: layers load on helper threads, and a
    torch kernel there would give that thread an OpenMP team of its own, which slows the
    compute thread's steps once the process holds more OpenMP threads than cores
    (see models/fusion.py).
    """
    out_features, in_features = weight.shape
    packed = numpy.empty((out_features, in_features), dtype=numpy.int8)
    scales = numpy.empty(out_features, dtype=numpy.float32)
    for rows in _row_chunks(out_features, in_features):
        values = _float32_array(weight[rows])
        chunk_scales = numpy.maximum(numpy.abs(values).max(axis=1) / 127, 1e-12).astype(numpy.float32)
        packed[rows] = numpy.clip(numpy.rint(values / chunk_scales[:, None]), -127, 127)
        scales[rows] = chunk_scales
    return torch.from_numpy(packed).to(weight.device), torch.from_numpy(scales).to(weight.device)


def int4_codes(weight: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric grouped int4 codes ``[out, in]`` in 0..15, with per-group scales and minima (numpy)."""
    out_features, in_features = weight.shape
    codes = numpy.empty((out_features, in_features), dtype=numpy.int32)
    scales = numpy.empty((out_features, in_features // group), dtype=numpy.float32)
    lows = numpy.empty((out_features, in_features // group), dtype=numpy.float32)
    for rows in _row_chunks(out_features, in_features):
        grouped = _float32_array(weight[rows]).reshape(-1, in_features // group, group)
        low = grouped.min(axis=-1, keepdims=True)
        chunk_scales = numpy.maximum((grouped.max(axis=-1, keepdims=True) - low) / 15, 1e-12)
        chunk_scales = chunk_scales.astype(numpy.float32)
        chunk_codes = numpy.clip(numpy.rint((grouped - low) / chunk_scales), 0, 15)
        codes[rows] = chunk_codes.reshape(-1, in_features)
        scales[rows], lows[rows] = chunk_scales[..., 0], low[..., 0]
    return torch.from_numpy(codes), torch.from_numpy(scales), torch.from_numpy(lows)


def quantize_int4(weight: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tinygemm's packed weight and ``[in/group, out, 2]`` scales-and-zeros (bfloat16).

    Tinygemm dequantizes as ``(code - 8) * scale + zero``, so ``zero = low + 8 * scale``.
    """
    codes, scales, low = int4_codes(weight, group)
    scale_values, low_values = scales.numpy(), low.numpy()
    zeros = low_values + 8 * scale_values
    scales_and_zeros = _bfloat16_tensor(numpy.stack([scale_values.T, zeros.T], axis=-1))
    if weight.device.type == "cpu":
        with one_thread():
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    else:
        pairs = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8).to(weight.device)
        packed = torch.ops.aten._convert_weight_to_int4pack(pairs, cuda_inner_k_tiles(weight.shape[1]))
    return packed, scales_and_zeros.to(weight.device)


def cuda_inner_k_tiles(in_features: int) -> int:
    """The CUDA tinygemm layout's inner K tiles (8, 4 or 2, each 16 columns) that divide the width.

    8 needs a width divisible by 128, which the default model's 576 is not (4 fits it).
    """
    for tiles in (8, 4, 2):
        if in_features % (16 * tiles) == 0:
            return tiles
    raise QuantizationError(f"cannot pack a width of {in_features} for CUDA tinygemm (not a multiple of 32)")


def dequantize_int4(weight: torch.Tensor, group: int) -> torch.Tensor:
    """The float weight int4 packing of ``weight`` stands for (a test and benchmark reference)."""
    codes, scales, low = int4_codes(weight, group)
    out_features, in_features = weight.shape
    grouped = codes.float().reshape(out_features, in_features // group, group)
    zeros = (low + 8 * scales).to(torch.bfloat16).float()
    scales = scales.to(torch.bfloat16).float()
    return ((grouped - 8) * scales[..., None] + zeros[..., None]).reshape(out_features, in_features)


def quantize_linears(module: nn.Module, bits: int, activation_dtype: torch.dtype, name: str) -> int:
    """Replace every ``nn.Linear`` under ``module`` by a :class:`QuantizedLinear`; returns how many.

    Fusable projection groups (q/k/v, gate/up) are stacked first and quantized as one
    matrix, which gives each member exactly the rows it would have had alone.
    """
    from language_pipes.models.fusion import fuse_quantized_groups

    def pack(weight: torch.Tensor, bias: torch.Tensor | None, label: str) -> nn.Module:
        return QuantizedLinear.from_weight(weight, bias, bits, activation_dtype, f"{name}.{label}")

    replaced = fuse_quantized_groups(module, pack)
    for parent_name, parent in list(module.named_modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                label = f"{name}.{parent_name + '.' if parent_name else ''}{child_name}"
                quantized = QuantizedLinear.from_weight(
                    child.weight, child.bias, bits, activation_dtype, label
                )
                setattr(parent, child_name, quantized)
                replaced += 1
    return replaced
