"""``/v1/models``: exactly the servable models; ids with a slash; 404 in the envelope."""

from __future__ import annotations

from fastapi.testclient import TestClient
from openai.types import Model

from language_pipes.api.app import create_app
from support.scripted_engine import ScriptedCatalog, ScriptedGenerator

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def client_for(*model_ids: str) -> TestClient:
    catalog = ScriptedCatalog(*(ScriptedGenerator(model_id, ["x"]) for model_id in model_ids))
    return TestClient(create_app(catalog, api_keys=[], max_api_jobs=1), base_url="http://localhost")


def test_list_shows_exactly_the_servable_models() -> None:
    body = client_for(MODEL, "Qwen/Qwen3-1.7B").get("/v1/models").json()
    assert body["object"] == "list"
    cards = [Model.model_validate(card) for card in body["data"]]
    assert [card.id for card in cards] == [MODEL, "Qwen/Qwen3-1.7B"]
    assert all(card.object == "model" and card.owned_by for card in cards)
    assert client_for().get("/v1/models").json() == {"object": "list", "data": []}


def test_retrieve_a_model_whose_id_has_a_slash() -> None:
    response = client_for(MODEL).get(f"/v1/models/{MODEL}")
    assert response.status_code == 200
    assert Model.model_validate(response.json()).id == MODEL


def test_retrieve_an_unknown_model_is_404() -> None:
    response = client_for(MODEL).get("/v1/models/someone/else")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
