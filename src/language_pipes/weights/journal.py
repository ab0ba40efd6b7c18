"""What a folder fetched from peers holds: its manifest, the verified pieces, the complete tensors.

* ``.lp-manifest.json``: the manifest the folder was fetched against (never rebuilt from the files,
  which may hold only some tensors);
* ``.lp-journal``: one line per verified piece, appended as pieces arrive, so an interrupted
  fetch resumes (each listed piece is hashed again from disk before it counts);
* ``.lp-weights.json``: the tensors the folder holds, written atomically once they are all in.
  Its presence marks a *partial* folder: :class:`~language_pipes.models.weights.WeightReader`
  refuses to read any tensor it does not list.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from language_pipes.models.weights import HELD_TENSORS_FILE
from language_pipes.weights.manifest import MANIFEST_FILE, Manifest, ManifestError, Piece, parse_manifest

JOURNAL_FILE = ".lp-journal"


def held_tensors(folder: Path) -> set[str] | None:
    """Tensors a partial folder holds; None for a complete folder (one not fetched from peers)."""
    path = folder / HELD_TENSORS_FILE
    if not path.is_file():
        return None
    return set(json.loads(path.read_text())["tensors"])


def stored_manifest(folder: Path) -> Manifest | None:
    """The manifest a fetched folder was fetched against; None when it has none."""
    try:
        return parse_manifest((folder / MANIFEST_FILE).read_bytes())
    except FileNotFoundError:
        return None
    except ManifestError:
        # Damaged on disk: treat the folder as holding nothing verified.
        return None


def write_stored_manifest(folder: Path, manifest: Manifest) -> None:
    _write_atomically(folder / MANIFEST_FILE, manifest.canonical_json())


def write_held_tensors(folder: Path, manifest: Manifest, tensors: Iterable[str]) -> None:
    body = {"manifest_sha256": manifest.digest(), "tensors": sorted(set(tensors))}
    _write_atomically(folder / HELD_TENSORS_FILE, json.dumps(body).encode())


class Journal:
    """The verified pieces of one folder, appended to disk as they arrive."""

    def __init__(self, folder: Path, manifest: Manifest) -> None:
        self.folder = folder
        self.path = folder / JOURNAL_FILE
        self.verified: set[str] = set()
        self._manifest_digest = manifest.digest()

    def recover(self, pieces: Iterable[Piece]) -> int:
        """Load the journal, keeping listed pieces whose bytes on disk still match; returns the bytes kept."""
        listed = self._listed()
        kept = 0
        for piece in pieces:
            if piece.key in listed and self._on_disk_matches(piece):
                self.verified.add(piece.key)
                kept += piece.size
        return kept

    def record(self, piece: Piece) -> None:
        with self.path.open("a") as handle:
            handle.write(f"{self._manifest_digest} {piece.key}\n")
        self.verified.add(piece.key)

    def _listed(self) -> set[str]:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return set()
        # A line cut short by a kill simply does not match any piece key.
        return {line.split(" ", 1)[1] for line in lines if line.startswith(self._manifest_digest + " ")}

    def _on_disk_matches(self, piece: Piece) -> bool:
        try:
            with (self.folder / piece.file).open("rb") as handle:
                handle.seek(piece.start)
                data = handle.read(piece.size)
        except OSError:
            # The file is gone or unreadable: the piece must be fetched again.
            return False
        return hashlib.sha256(data).hexdigest() == piece.sha256


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
