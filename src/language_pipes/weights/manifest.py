"""The manifest of a model folder: every file, every tensor, every piece, each with its SHA-256.

A *piece* is the unit of transfer and of verification: a byte range of one file
with its own hash. Small files are pieces of up to :data:`BLOCK_BYTES`; a
safetensors file is its header (one piece) plus each tensor cut into blocks of
up to :data:`BLOCK_BYTES`. The manifest's digest (SHA-256 of its canonical
JSON) names it; a node pins a model with that digest (``manifest_sha256``).

Building hashes every byte once; the result is cached in the folder
(``.lp-manifest.json``) and rebuilt when a file's size or mtime changes. A
folder fetched from peers keeps the manifest it was fetched against and a list
of the tensors it holds (``.lp-weights.json``, see :mod:`.journal`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import mmap
import os
import re
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from language_pipes.models.store import SAFETENSORS_INDEX, SUPPORT_FILE_PATTERNS

# Pieces stay far below the network's message cap (language_pipes.network.limits).
BLOCK_BYTES = 4 * 1024 * 1024
MANIFEST_FILE = ".lp-manifest.json"
MANIFEST_STAT_FILE = ".lp-manifest.stat.json"
MAX_MANIFEST_FILES = 4096
# A file name the manifest may carry: one path part, no leading dot, no separators.
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")
_MAX_HEADER_BYTES = 100 * 1024 * 1024


class ManifestError(ValueError):
    """A manifest that cannot be built, parsed or trusted; the message says why."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class TensorEntry(_Frozen):
    """One tensor of a safetensors file: absolute byte range in the file and hashes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int = Field(ge=0)
    end: int = Field(ge=0)
    sha256: str
    blocks: tuple[str, ...]  # SHA-256 of each BLOCK_BYTES slice of [start, end)


class FileEntry(_Frozen):
    """One file of the model folder; ``tensors`` and ``header_*`` only for safetensors files."""

    name: str
    size: int = Field(ge=0)
    sha256: str
    blocks: tuple[str, ...] = ()  # small files: hash of each BLOCK_BYTES slice
    header_end: int = 0
    header_sha256: str = ""
    tensors: tuple[TensorEntry, ...] = ()


class Manifest(_Frozen):
    model_id: str
    block_bytes: int = Field(gt=0)
    files: tuple[FileEntry, ...]

    def canonical_json(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()

    def digest(self) -> str:
        return hashlib.sha256(self.canonical_json()).hexdigest()

    def file(self, name: str) -> FileEntry | None:
        return next((entry for entry in self.files if entry.name == name), None)

    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.files)


class Piece(_Frozen):
    """A verified unit of transfer: ``[start, end)`` of ``file``; ``tensor`` is None for non-tensor bytes."""

    file: str
    start: int
    end: int
    sha256: str
    tensor: str | None = None

    @property
    def key(self) -> str:
        return f"{self.file}:{self.start}"

    @property
    def size(self) -> int:
        return self.end - self.start


def parse_manifest(raw: bytes | str) -> Manifest:
    """Parse and check a manifest from a peer: names, ranges and hashes must all be well formed."""
    try:
        manifest = Manifest.model_validate_json(raw)
    except ValidationError as error:
        raise ManifestError(f"not a manifest: {error.errors()[0]['msg']}") from error
    check_manifest(manifest)
    return manifest


def check_manifest(manifest: Manifest) -> None:
    if len(manifest.files) > MAX_MANIFEST_FILES:
        raise ManifestError(f"{len(manifest.files)} files is more than {MAX_MANIFEST_FILES}")
    names = [entry.name for entry in manifest.files]
    if len(set(names)) != len(names):
        raise ManifestError("a file is listed twice")
    for entry in manifest.files:
        if not is_safe_file_name(entry.name):
            raise ManifestError(f"file name {entry.name!r} is not a plain file name")
        _check_block_counts(manifest.block_bytes, entry)
        for piece in file_pieces(manifest, entry):
            if not 0 <= piece.start < piece.end <= entry.size and _is_sha256(piece.sha256):
                raise ManifestError(
                    f"{entry.name}: piece {piece.start}-{piece.end} is out of range or unhashed"
                )


def _check_block_counts(block_bytes: int, entry: FileEntry) -> None:
    """Every byte of a file (or a tensor) must lie in exactly one hashed piece: no unhashed gaps."""
    spans = [(0, entry.size, entry.blocks)] if not entry.header_end else []
    spans += [(tensor.start, tensor.end, tensor.blocks) for tensor in entry.tensors]
    for start, end, blocks in spans:
        if end < start or len(blocks) != math.ceil((end - start) / block_bytes):
            raise ManifestError(f"{entry.name}: bytes {start}-{end} are not covered by hashed blocks")


def is_safe_file_name(name: str) -> bool:
    """One path part of ordinary characters: it cannot name anything outside its folder."""
    return bool(_FILE_NAME.fullmatch(name)) and ".." not in name


def file_pieces(manifest: Manifest, entry: FileEntry) -> list[Piece]:
    """Every piece of one file, in order (for a safetensors file: header, then tensor blocks)."""
    if not entry.tensors and not entry.header_end:
        return _blocks(entry.name, 0, entry.size, entry.blocks, manifest.block_bytes, None)
    pieces = [Piece(file=entry.name, start=0, end=entry.header_end, sha256=entry.header_sha256)]
    for tensor in entry.tensors:
        pieces += _blocks(
            entry.name, tensor.start, tensor.end, tensor.blocks, manifest.block_bytes, tensor.name
        )
    return pieces


def pieces_for(manifest: Manifest, tensors: Iterable[str] | None) -> list[Piece]:
    """Pieces a node needs: every non-tensor piece, plus the blocks of ``tensors`` (all when None)."""
    wanted = None if tensors is None else set(tensors)
    needed: list[Piece] = []
    for entry in manifest.files:
        for piece in file_pieces(manifest, entry):
            if piece.tensor is None or wanted is None or piece.tensor in wanted:
                needed.append(piece)
    return needed


def tensor_names(manifest: Manifest) -> list[str]:
    return [tensor.name for entry in manifest.files for tensor in entry.tensors]


def build_manifest(folder: Path, model_id: str, block_bytes: int = BLOCK_BYTES) -> Manifest:
    """The manifest of an installed folder, from its cache when no file changed since it was built."""
    stat = _folder_stat(folder)
    cached = _cached(folder, stat)
    if cached is not None and cached.model_id == model_id and cached.block_bytes == block_bytes:
        return cached
    files = tuple(_file_entry(folder / name, block_bytes) for name in sorted(stat))
    manifest = Manifest(model_id=model_id, block_bytes=block_bytes, files=files)
    # Atomic, so another node process sharing the store never reads half a cache.
    _write_atomically(folder / MANIFEST_FILE, manifest.canonical_json())
    _write_atomically(folder / MANIFEST_STAT_FILE, json.dumps(stat).encode())
    return manifest


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def model_file_names(folder: Path) -> list[str]:
    """The files a manifest covers: support files, the index and top-level safetensors files."""
    names = []
    for path in folder.iterdir():
        if not path.is_file() or not is_safe_file_name(path.name):
            continue
        weights = path.name.endswith(".safetensors") or path.name == SAFETENSORS_INDEX
        if weights or any(fnmatch.fnmatch(path.name, pattern) for pattern in SUPPORT_FILE_PATTERNS):
            names.append(path.name)
    return sorted(names)


def safetensors_header_end(prefix: bytes) -> int:
    """Where the header of a safetensors file ends, from its first 8 bytes."""
    length = int.from_bytes(prefix[:8], "little")
    if length > _MAX_HEADER_BYTES:
        raise ManifestError(f"safetensors header of {length} bytes is too large")
    return 8 + length


def _folder_stat(folder: Path) -> dict[str, list[int]]:
    stat = {}
    for name in model_file_names(folder):
        info = (folder / name).stat()
        stat[name] = [info.st_size, info.st_mtime_ns]
    return stat


def _cached(folder: Path, stat: dict[str, list[int]]) -> Manifest | None:
    try:
        if json.loads((folder / MANIFEST_STAT_FILE).read_text()) != stat:
            return None
        return parse_manifest((folder / MANIFEST_FILE).read_bytes())
    except (OSError, ValueError):
        # No cache yet, or a damaged one: build the manifest again.
        return None


def _file_entry(path: Path, block_bytes: int) -> FileEntry:
    size = path.stat().st_size
    with path.open("rb") as handle:
        if size == 0:
            return FileEntry(name=path.name, size=0, sha256=_hash(b""))
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            whole = hashlib.sha256()
            for offset in range(0, size, block_bytes):
                whole.update(data[offset : offset + block_bytes])
            if not path.name.endswith(".safetensors"):
                return FileEntry(
                    name=path.name,
                    size=size,
                    sha256=whole.hexdigest(),
                    blocks=_range_hashes(data, 0, size, block_bytes),
                )
            return _safetensors_entry(path.name, data, size, whole.hexdigest(), block_bytes)


def _safetensors_entry(name: str, data: mmap.mmap, size: int, whole: str, block_bytes: int) -> FileEntry:
    header_end = safetensors_header_end(data[:8])
    header = json.loads(data[8:header_end])
    tensors = []
    for tensor_name, info in header.items():
        if tensor_name == "__metadata__":
            continue
        begin, finish = (header_end + int(offset) for offset in info["data_offsets"])
        tensor_hash = hashlib.sha256()
        for offset in range(begin, finish, block_bytes):
            tensor_hash.update(data[offset : min(finish, offset + block_bytes)])
        tensors.append(
            TensorEntry(
                name=tensor_name,
                dtype=str(info["dtype"]),
                shape=tuple(int(dimension) for dimension in info["shape"]),
                start=begin,
                end=finish,
                sha256=tensor_hash.hexdigest(),
                blocks=_range_hashes(data, begin, finish, block_bytes),
            )
        )
    tensors.sort(key=lambda tensor: tensor.start)
    return FileEntry(
        name=name,
        size=size,
        sha256=whole,
        header_end=header_end,
        header_sha256=_hash(data[:header_end]),
        tensors=tuple(tensors),
    )


def _range_hashes(data: mmap.mmap, start: int, end: int, block_bytes: int) -> tuple[str, ...]:
    return tuple(
        _hash(data[offset : min(end, offset + block_bytes)]) for offset in range(start, end, block_bytes)
    )


def _blocks(
    file: str, start: int, end: int, hashes: tuple[str, ...], block_bytes: int, tensor: str | None
) -> list[Piece]:
    pieces = []
    for index, digest in enumerate(hashes):
        begin = start + index * block_bytes
        pieces.append(
            Piece(file=file, start=begin, end=min(end, begin + block_bytes), sha256=digest, tensor=tensor)
        )
    return pieces


def _hash(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(character in "0123456789abcdef" for character in text)
