"""Files only their owner may read: configurations hold ``network_key`` and ``api_keys``."""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_MODE = 0o600


def write_private_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically, as a file of mode 0600 (folders are created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_MODE)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(temporary, PRIVATE_MODE)  # a leftover temporary file keeps its old mode through O_CREAT
    temporary.replace(path)
