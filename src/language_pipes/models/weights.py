"""Selective reads from a safetensors model folder: only the tensors a node hosts enter memory.

A folder fetched from peers may hold only some tensors (the layers placement gave its node):
its safetensors files keep their full headers, and ``.lp-weights.json`` lists the tensors whose
bytes are there. Reading any other tensor raises :class:`MissingTensorError` instead of returning
the zeros of a file hole.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open

_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}


# Written by language_pipes.weights.journal in folders fetched from peers.
HELD_TENSORS_FILE = ".lp-weights.json"


class MissingTensorError(LookupError):
    """The folder was fetched from peers without these tensors (another node's layers)."""


class WeightReader:
    """Knows which shard holds each tensor of a checkpoint and reads tensors by name prefix."""

    def __init__(self, folder: Path, renames: Mapping[str, str] | None = None) -> None:
        """``renames`` maps stored name prefixes to module ones (a multimodal checkpoint's text model)."""
        self.folder = folder
        index_file = folder / "model.safetensors.index.json"
        if index_file.exists():
            weight_map: dict[str, str] = json.loads(index_file.read_text())["weight_map"]
            self.shard_of = dict(weight_map)
        else:
            shards = sorted(folder.glob("*.safetensors"))
            if not shards:
                raise FileNotFoundError(f"no *.safetensors weights in {folder}")
            self.shard_of = {}
            for shard in shards:
                with safe_open(shard, framework="pt") as handle:
                    self.shard_of.update({name: shard.name for name in handle.keys()})  # noqa: SIM118
        # Module name -> name in the checkpoint, for the renamed tensors only.
        self._stored_name = {_renamed(name, renames): name for name in self.shard_of} if renames else {}
        if self._stored_name:
            self.shard_of = {name: self.shard_of[stored] for name, stored in self._stored_name.items()}

    def names_with_prefix(self, prefix: str) -> list[str]:
        return [name for name in self.shard_of if name.startswith(prefix)]

    def has(self, name: str) -> bool:
        return name in self.shard_of

    def read(self, names: Iterable[str], dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
        """Read the named tensors, cast to ``dtype`` on ``device``; one open per shard."""
        names = list(names)
        self._check_held(names)
        by_shard: dict[str, list[str]] = {}
        for name in names:
            by_shard.setdefault(self.shard_of[name], []).append(name)
        tensors: dict[str, torch.Tensor] = {}
        for shard, shard_names in by_shard.items():
            with safe_open(self.folder / shard, framework="pt", device="cpu") as handle:
                for name in shard_names:
                    tensor = handle.get_tensor(self._stored_name.get(name, name))
                    if tensor.is_floating_point():
                        tensor = tensor.to(dtype)
                    tensors[name] = tensor.to(device)
        return tensors

    def stored_names_with_prefix(self, prefix: str) -> list[str]:
        """Names in the checkpoint (before renames) of the tensors under module prefix ``prefix``."""
        return [self._stored_name.get(name, name) for name in self.names_with_prefix(prefix)]

    def _check_held(self, names: list[str]) -> None:
        held_file = self.folder / HELD_TENSORS_FILE
        if not held_file.is_file():
            return
        held = set(json.loads(held_file.read_text())["tensors"])
        missing = [name for name in names if self._stored_name.get(name, name) not in held]
        if missing:
            raise MissingTensorError(
                f"{self.folder.name} was fetched from peers without {len(missing)} tensors this node "
                f"now needs (first: {missing[0]}); they must be fetched before loading"
            )

    def shapes_with_prefix(self, prefix: str) -> dict[str, list[int]]:
        """Shapes of the tensors under ``prefix``, from the shard headers only."""
        shapes: dict[str, list[int]] = {}
        by_shard: dict[str, list[str]] = {}
        for name in self.names_with_prefix(prefix):
            by_shard.setdefault(self.shard_of[name], []).append(name)
        for shard, names in by_shard.items():
            header = _read_header(self.folder / shard)
            shapes.update({name: list(header[name]["shape"]) for name in names})  # type: ignore[call-overload]
        return shapes

    def stored_nbytes(self, prefix: str, dtype: torch.dtype) -> int:
        """Bytes the tensors under ``prefix`` take once cast to ``dtype`` (from headers only)."""
        element = torch.empty((), dtype=dtype).element_size()
        total = 0
        by_shard: dict[str, list[str]] = {}
        for name in self.names_with_prefix(prefix):
            by_shard.setdefault(self.shard_of[name], []).append(name)
        for shard, names in by_shard.items():
            header = _read_header(self.folder / shard)
            for name in names:
                entry = header[self._stored_name.get(name, name)]
                count = 1
                for size in entry["shape"]:
                    count *= size
                is_float = entry["dtype"] in ("F64", "F32", "F16", "BF16")
                total += count * (element if is_float else _DTYPE_BYTES.get(entry["dtype"], 4))
        return total


def _renamed(name: str, renames: Mapping[str, str]) -> str:
    for stored, module in renames.items():
        if name.startswith(stored):
            return module + name[len(stored) :]
    return name


def _read_header(path: Path) -> dict[str, dict[str, object]]:
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        return json.loads(handle.read(length))
