"""Pinned identity keys: trust on first *proof*, remembered across restarts.

A node id's identity key is pinned only once a peer has signed a handshake
transcript with it (never from a ``hello`` alone, never from gossip), and
from then on only that key is accepted for the id.

With a ``path`` the pins persist, one line per node (like ssh's
``known_hosts``)::

    <hex identity key> <node id as a JSON string>

The file is written with mode 0600. **To trust a node that was re-keyed**
(its credentials were replaced), delete its line from the file: the running
node notices the change (it re-reads the file when a key mismatch happens and
the file changed) and pins the new key at the node's next handshake.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from pathlib import Path

from language_pipes.network.types import NodeId
from language_pipes.paths import app_dir

logger = logging.getLogger(__name__)

_SAFE_FILE_STEM = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
_KEY_HEX_CHARS = 64
# Beyond this many pins (an open network where anyone can make up identities) new ids are not pinned,
# so neither memory nor the file grows without bound; the ids pinned so far stay protected.
MAX_PINNED_KEYS = 4096


def known_nodes_file(own_node_id: str) -> Path:
    """Where node ``own_node_id`` keeps its pins: ``$LP_APP_DIR/known_nodes/<id>.txt``."""
    stem = (
        own_node_id
        if _SAFE_FILE_STEM.fullmatch(own_node_id)
        else "id-" + hashlib.sha256(own_node_id.encode()).hexdigest()[:32]
    )
    return app_dir() / "known_nodes" / f"{stem}.txt"


class PinnedKeys:
    """Node id -> the one identity key accepted for it."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._keys: dict[NodeId, bytes] = {}
        self._file_signature: tuple[int, int] | None = None
        self._file_ids: set[NodeId] = set()  # the pins that came from (or went to) the file
        self._fixed: dict[NodeId, bytes] = {}  # our own key, and keys named in whitelist_node_ids
        self._lock = threading.Lock()
        if path is not None:
            self._load()

    def conflicts(self, node_id: NodeId, public_key: bytes) -> bool:
        """True if ``node_id`` is pinned to a key other than ``public_key`` (nothing is pinned here)."""
        with self._lock:
            pinned = self._keys.get(node_id)
            if pinned is None or pinned == public_key:
                return False
            if self._path is not None and self._file_changed():
                self._load()  # someone may have deleted the line to trust a re-keyed node
                pinned = self._keys.get(node_id)
            return pinned is not None and pinned != public_key

    def pin(self, node_id: NodeId, public_key: bytes) -> bool:
        """Pin ``public_key`` for ``node_id`` after the peer proved it holds it; False on a conflict."""
        with self._lock:
            pinned = self._keys.get(node_id)
            if pinned is not None:
                return pinned == public_key
            if len(self._keys) >= MAX_PINNED_KEYS:
                return True
            self._keys[node_id] = public_key
            if self._path is not None:
                self._append(node_id, public_key)
        return True

    def pinned(self, node_id: NodeId) -> bytes | None:
        return self._keys.get(node_id)

    def pin_fixed(self, node_id: NodeId, public_key: bytes) -> None:
        """A key known from configuration (or our own): pinned in memory, above whatever the file says."""
        with self._lock:
            self._fixed[node_id] = public_key
            self._keys[node_id] = public_key

    # ------------------------------------------------------------- the file

    def _file_changed(self) -> bool:
        assert self._path is not None
        try:
            stat = self._path.stat()
        except FileNotFoundError:
            # Deleted as a whole: every pin is forgotten.
            return self._file_signature is not None
        return (stat.st_mtime_ns, stat.st_size) != self._file_signature

    def _load(self) -> None:
        assert self._path is not None
        memory_only = {node_id: key for node_id, key in self._keys.items() if node_id not in self._file_ids}
        memory_only.update(self._fixed)
        self._keys = {**self._read(), **memory_only}
        self._keys.update(self._fixed)

    def _read(self) -> dict[NodeId, bytes]:
        assert self._path is not None
        keys: dict[NodeId, bytes] = {}
        try:
            text = self._path.read_text(encoding="utf-8")
            stat = self._path.stat()
        except FileNotFoundError:
            # No pins yet (first run), or the user deleted the file to forget them all.
            self._file_signature = None
            self._file_ids = set()
            return keys
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.startswith("#"):
                continue
            try:
                key_hex, id_json = line[:_KEY_HEX_CHARS], line[_KEY_HEX_CHARS + 1 :]
                key = bytes.fromhex(key_hex)
                node_id = json.loads(id_json)
                if len(key) != 32 or not isinstance(node_id, str):
                    raise ValueError("not a 32-byte key and a node id")
            except ValueError as error:
                # A hand-edited line we cannot read: skipped (and said), the rest still count.
                logger.warning("%s line %d ignored: %s", self._path, number, error)
                continue
            keys[NodeId(node_id)] = key
        self._file_signature = (stat.st_mtime_ns, stat.st_size)
        self._file_ids = set(keys)
        return keys

    def _append(self, node_id: NodeId, public_key: bytes) -> None:
        assert self._path is not None
        line = f"{public_key.hex()} {json.dumps(node_id)}\n"
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(descriptor, "a", encoding="utf-8") as file:
                file.write(line)
            os.chmod(self._path, 0o600)
            stat = self._path.stat()
        except OSError as error:
            # A read-only or full disk must not stop the network: the pin holds in memory.
            logger.warning("could not save the pinned key of node %r to %s: %s", node_id, self._path, error)
            return
        self._file_signature = (stat.st_mtime_ns, stat.st_size)
        self._file_ids.add(node_id)
