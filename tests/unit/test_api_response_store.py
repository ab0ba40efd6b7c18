"""The response store behind ``previous_response_id``: entries belong to one API key; bytes are bounded."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from language_pipes.api.app import create_app
from language_pipes.api.response_store import ResponseId, ResponseStore, StoredResponse
from language_pipes.api.settings import ApiSettings
from support.scripted_engine import ScriptedCatalog, ScriptedGenerator

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def entry(number: int, text: str = "hello", owner: str = "k") -> StoredResponse:
    return StoredResponse(
        response_id=ResponseId(f"resp_{number}"),
        model=MODEL,
        conversation=({"role": "user", "content": text},),
        owner=owner,
    )


def keyed_client(keys: list[str], settings: ApiSettings | None = None) -> TestClient:
    generator = ScriptedGenerator(MODEL, ["Nice to meet you."])
    app = create_app(ScriptedCatalog(generator), api_keys=keys, max_api_jobs=5, settings=settings)
    return TestClient(app, raise_server_exceptions=False, base_url="http://localhost")


def respond(client: TestClient, key: str | None, **body: Any) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.post("/v1/responses", json={"model": MODEL, "input": "Hi", **body}, headers=headers)


def test_another_key_cannot_continue_a_stored_response() -> None:
    client = keyed_client(["alice", "bob"])
    first = respond(client, "alice", input="My name is Ada.").json()
    stolen = respond(client, "bob", previous_response_id=first["id"])
    unknown = respond(client, "bob", previous_response_id="resp_never_stored")
    # Exactly the answer for an id that was never stored: nothing tells bob the id exists.
    assert stolen.status_code == unknown.status_code == 400
    stolen_error, unknown_error = stolen.json()["error"], unknown.json()["error"]
    assert stolen_error["code"] == unknown_error["code"] == "previous_response_not_found"
    assert stolen_error["message"].replace(first["id"], "X") == unknown_error["message"].replace(
        "resp_never_stored", "X"
    )
    assert respond(client, "alice", previous_response_id=first["id"]).status_code == 200


def test_without_configured_keys_each_bearer_token_has_its_own_entries() -> None:
    client = keyed_client([])
    first = respond(client, "token-a").json()
    assert respond(client, "token-b", previous_response_id=first["id"]).status_code == 400
    assert respond(client, None, previous_response_id=first["id"]).status_code == 400
    assert respond(client, "token-a", previous_response_id=first["id"]).status_code == 200


def test_the_store_is_bounded_in_bytes() -> None:
    store = ResponseStore(capacity=1000, max_bytes=10_000)
    for number in range(20):
        store.put(entry(number, text="x" * 2000))
    assert store.size_bytes <= 10_000
    assert len(store) == 10_000 // entry(0, text="x" * 2000).size_bytes()
    assert store.get("resp_19", owner="k") is not None
    assert store.get("resp_0", owner="k") is None  # the oldest went first
    store.put(entry(99, text="y" * 20_000))  # larger than the whole store: not kept
    assert store.get("resp_99", owner="k") is None and store.size_bytes <= 10_000


def test_the_store_is_bounded_in_entries_and_replacing_keeps_the_count_right() -> None:
    store = ResponseStore(capacity=3)
    for number in range(5):
        store.put(entry(number))
    assert len(store) == 3
    size = store.size_bytes
    store.put(entry(4))
    assert (len(store), store.size_bytes) == (3, size)


def test_multibyte_text_counts_in_utf8_bytes() -> None:
    assert entry(1, text="é" * 1000).size_bytes() - entry(1, text="e" * 1000).size_bytes() == 1000


def test_the_app_store_uses_the_configured_bytes() -> None:
    client = keyed_client([], ApiSettings(response_store_bytes=2048))
    first = respond(client, "k", input="z" * 4000).json()  # too large to keep
    assert respond(client, "k", previous_response_id=first["id"]).status_code == 400
    small = respond(client, "k", input="short").json()
    assert respond(client, "k", previous_response_id=small["id"]).status_code == 200
