"""Recent responses kept in memory so ``previous_response_id`` can continue a conversation.

Bounded: the oldest entries go first once ``capacity`` is reached. What is kept
is the conversation as the model saw it (without ``instructions``, which do
not carry over, as in OpenAI's API) plus the answer, ready to prepend to the
next request's input. Lives on ``app.state.response_store``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import NewType

from starlette.requests import Request

ResponseId = NewType("ResponseId", str)
DEFAULT_CAPACITY = 512

ConversationMessage = dict[str, str]


@dataclass(frozen=True)
class StoredResponse:
    response_id: ResponseId
    model: str
    conversation: tuple[ConversationMessage, ...]
    # call_id -> tool name of every function call in the conversation, to label tool results.
    call_names: tuple[tuple[str, str], ...] = ()


class ResponseStore:
    """A bounded, thread-safe map of response id -> stored conversation."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[ResponseId, StoredResponse] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, entry: StoredResponse) -> None:
        with self._lock:
            self._entries[entry.response_id] = entry
            self._entries.move_to_end(entry.response_id)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def get(self, response_id: str) -> StoredResponse | None:
        with self._lock:
            return self._entries.get(ResponseId(response_id))


def response_store(request: Request) -> ResponseStore:
    """The app's store, created on first use (``app.state.response_store``)."""
    state = request.app.state
    store: ResponseStore | None = getattr(state, "response_store", None)
    if store is None:
        store = ResponseStore()
        state.response_store = store
    return store
