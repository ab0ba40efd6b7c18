"""The ids every layer talks about, at the bottom of the import graph.

Typed ``NewType`` ids keep two kinds of id from being mixed up. They live here,
not in the package that happens to create them, so that ``models/``, ``pipes/``,
``engine/`` and ``api/`` can all name them without importing one another.
``NodeId`` stays with the network that owns node identity (``network/types.py``).
"""

from __future__ import annotations

from typing import NewType

# Opaque id of one generated sequence; the origin makes it, every hop keys its KV cache by it.
SequenceId = NewType("SequenceId", str)
# A model's name as the API and the gossip records spell it (a Hugging Face id).
ModelId = NewType("ModelId", str)
