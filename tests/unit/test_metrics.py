"""``GET /metrics``: Prometheus text that prometheus_client's own parser reads, fed by a real API server.

Requests by endpoint and status, TTFT and time per output token of streamed and
whole generations (through the ``openai`` SDK), the node's gauges, hop latency,
the speculation counters, and the API key that guards the page when keys are set.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import openai
import pytest
import pytest_asyncio
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from language_pipes import metrics
from language_pipes.api.app import create_app
from language_pipes.api.server import ApiServer
from support.scripted_engine import ScriptedCatalog, ScriptedGenerator

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
HELLO = [{"role": "user", "content": "Hello!"}]
STATE = metrics.ModelState(MODEL, 3, 2, 4096, 8192, 1 << 20)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, keyed by name and sorted labels (parsed by prometheus_client)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(scrape: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return scrape.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest_asyncio.fixture
async def server() -> AsyncIterator[ApiServer]:
    generator = ScriptedGenerator(MODEL, ["Hel", "lo", " there"], delay_seconds=0.01)
    app = create_app(ScriptedCatalog(generator), api_keys=[], max_api_jobs=5, node_state=lambda: [STATE])
    api = ApiServer(app, "127.0.0.1", 0)
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


async def scrape(api: ApiServer, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(api.url.removesuffix("/v1") + "/metrics", headers=headers or {})


@pytest.mark.asyncio
async def test_requests_and_token_pace_are_counted(server: ApiServer) -> None:
    before = samples((await scrape(server)).text)
    client = AsyncOpenAI(base_url=server.url, api_key="unused", max_retries=0)
    whole = await client.chat.completions.create(model=MODEL, messages=HELLO)  # type: ignore[arg-type]
    assert whole.choices[0].message.content == "Hello there"
    stream = await client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)  # type: ignore[arg-type]
    assert "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]) == (
        "Hello there"
    )
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="no/such-model", messages=HELLO)  # type: ignore[arg-type]
    async with httpx.AsyncClient() as raw:
        assert (await raw.get(server.url + "/no-such-route-7f3a")).status_code == 404

    response = await scrape(server)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    after = samples(response.text)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    chat = "/v1/chat/completions"
    assert grew("lp_requests_total", endpoint=chat, status="200") == 2
    assert grew("lp_requests_total", endpoint=chat, status="404") == 1
    # A route that does not exist is one label, whatever the path: scanners cannot grow the label set.
    assert grew("lp_requests_total", endpoint="unmatched", status="404") == 1
    assert not any("no-such-route" in str(labels) for _, labels in after)
    assert grew("lp_time_to_first_token_seconds_count") == 2
    assert grew("lp_time_per_output_token_seconds_count") == 2
    # Three pieces 10 ms apart: the two after the first take at least 10 ms each.
    pace = grew("lp_time_per_output_token_seconds_sum") / 2
    assert pace >= 0.009
    assert value(after, "lp_queue_depth", model=MODEL) == 2
    assert value(after, "lp_active_sequences", model=MODEL) == 3
    assert value(after, "lp_kv_cache_bytes", model=MODEL) == 4096
    assert value(after, "lp_kv_reserved_bytes", model=MODEL) == 8192
    assert value(after, "lp_kv_budget_bytes", model=MODEL) == 1 << 20


@pytest.mark.asyncio
async def test_hop_latency_and_speculation_counters(server: ApiServer) -> None:
    before = samples((await scrape(server)).text)
    metrics.record_hop_step("peer-for-metrics-test", 0.02)
    metrics.record_hop_step("peer-for-metrics-test", 0.04)
    metrics.record_speculation(drafted=5, accepted=3)
    metrics.record_speculation(drafted=2, accepted=0)
    after = samples((await scrape(server)).text)
    peer = {"peer": "peer-for-metrics-test"}
    assert value(after, "lp_hop_step_seconds_count", **peer) == 2
    assert value(after, "lp_hop_step_seconds_sum", **peer) == pytest.approx(0.06)
    assert value(after, "lp_hop_step_seconds_bucket", le="0.025", **peer) == 1
    drafted = "lp_speculation_drafted_tokens_total"
    accepted = "lp_speculation_accepted_tokens_total"
    assert value(after, drafted) - value(before, drafted) == 7
    assert value(after, accepted) - value(before, accepted) == 3
    latest = metrics.hop_latencies()["peer-for-metrics-test"]
    assert latest.last_s == 0.04 and latest.steps == 2 and 0.02 < latest.average_s < 0.04


def test_speculation_counts_are_checked() -> None:
    with pytest.raises(ValueError):
        metrics.record_speculation(drafted=2, accepted=3)
    with pytest.raises(ValueError):
        metrics.record_speculation(drafted=-1, accepted=0)


@pytest.mark.asyncio
async def test_metrics_need_the_api_key_when_keys_are_set() -> None:
    app = create_app(ScriptedCatalog(ScriptedGenerator(MODEL, ["a"])), api_keys=["secret"], max_api_jobs=5)
    api = ApiServer(app, "127.0.0.1", 0)
    await api.start()
    try:
        refused = await scrape(api)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert (await scrape(api, {"Authorization": "Bearer wrong"})).status_code == 401
        allowed = await scrape(api, {"Authorization": "Bearer secret"})
        assert allowed.status_code == 200
        # No node state given: the recorded metrics are there, the gauges are not.
        names = {family.name for family in text_string_to_metric_families(allowed.text)}
        assert {"lp_requests", "lp_time_to_first_token_seconds", "lp_hop_step_seconds"} <= names
        assert "lp_queue_depth" not in names
    finally:
        await api.stop()
