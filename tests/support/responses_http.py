"""A /v1/responses test client over the real HTTP app with a scripted engine behind it."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from language_pipes.api.app import create_app
from support.scripted_engine import ScriptedCatalog, ScriptedGenerator

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Get weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def make_client(pieces: list[str], tokenizer: Any = None) -> tuple[TestClient, ScriptedGenerator]:
    generator = ScriptedGenerator(MODEL, pieces)
    if tokenizer is not None:
        generator.tokenizer = tokenizer
    app = create_app(ScriptedCatalog(generator), api_keys=[], max_api_jobs=5)
    return TestClient(app, raise_server_exceptions=False, base_url="http://localhost"), generator


def post(client: TestClient, **body: Any) -> Any:
    return client.post("/v1/responses", json={"model": MODEL, "input": "Hi", **body})
