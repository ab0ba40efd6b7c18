"""Recent responses kept in memory so ``previous_response_id`` can continue a conversation.

Bounded in entries and in bytes: the oldest entries go first once ``capacity``
entries or ``max_bytes`` (the UTF-8 size of the kept text) are passed. Each
entry belongs to the API key that created it: another key asking for it gets
the same answer as for an id that was never stored. What is kept
is the conversation as the model saw it (without ``instructions``, which do
not carry over, as in OpenAI's API) plus the answer, ready to prepend to the
next request's input. Lives on ``app.state.response_store``.
"""

from __future__ import annotations

import hmac
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import NewType

from starlette.requests import Request

ResponseId = NewType("ResponseId", str)
DEFAULT_CAPACITY = 512
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# Per-entry bookkeeping counted on top of the text, so many tiny entries are bounded too.
ENTRY_OVERHEAD_BYTES = 256

ConversationMessage = dict[str, str]


@dataclass(frozen=True)
class StoredResponse:
    response_id: ResponseId
    model: str
    conversation: tuple[ConversationMessage, ...]
    # call_id -> tool name of every function call in the conversation, to label tool results.
    call_names: tuple[tuple[str, str], ...] = ()
    # The API key (client key) that created it; only that key may continue from it.
    owner: str = ""

    def size_bytes(self) -> int:
        """Approximate memory held: the UTF-8 size of every kept string, plus a fixed overhead."""
        strings = [self.model, self.owner]
        strings.extend(part for message in self.conversation for item in message.items() for part in item)
        strings.extend(part for pair in self.call_names for part in pair)
        return ENTRY_OVERHEAD_BYTES * (1 + len(self.conversation)) + sum(_utf8_size(text) for text in strings)


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


class ResponseStore:
    """A bounded (entries and bytes), thread-safe map of response id -> stored conversation."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._entries: OrderedDict[ResponseId, tuple[StoredResponse, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def put(self, entry: StoredResponse) -> None:
        """Keep ``entry``, dropping the oldest past a bound (one over ``max_bytes`` is not kept)."""
        size = entry.size_bytes()
        with self._lock:
            self._discard(entry.response_id)
            if size > self.max_bytes:
                return
            self._entries[entry.response_id] = (entry, size)
            self._bytes += size
            while len(self._entries) > self.capacity or self._bytes > self.max_bytes:
                _, (_, dropped_size) = self._entries.popitem(last=False)
                self._bytes -= dropped_size

    def _discard(self, response_id: ResponseId) -> None:
        kept = self._entries.pop(response_id, None)
        if kept is not None:
            self._bytes -= kept[1]

    def get(self, response_id: str, owner: str = "") -> StoredResponse | None:
        """The entry, if it exists and belongs to ``owner`` (otherwise None, exactly as if unknown)."""
        with self._lock:
            kept = self._entries.get(ResponseId(response_id))
        if kept is None or not hmac.compare_digest(kept[0].owner.encode(), owner.encode()):
            return None
        return kept[0]


def response_store(request: Request) -> ResponseStore:
    """The app's store (``app.state.response_store``), created on first use by apps built without one."""
    state = request.app.state
    store: ResponseStore | None = getattr(state, "response_store", None)
    if store is None:
        store = ResponseStore()
        state.response_store = store
    return store
