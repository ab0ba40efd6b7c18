"""An end node that also runs the last layers (``num_local_last_layers = 2``) with a real layer node.

Two real :class:`Node` objects in this process on loopback (real ZeroMQ
sockets, encryption, placement, routing, the API through the ``openai`` SDK).
The layer node must place itself on the middle layers only (1-27), every step
it receives must stop at layer 28 (so the final hidden states never cross the
wire), and greedy output must still equal transformers in one process.

Then the same pipe turns mixed: the layer node swaps its bf16 layers for int8
ones while running, then for int4 ones (the end node stays bf16, hidden states
cross in bf16). The reference is honest about what quantizing changes: the very
same weights (the origin's bf16 end model and the layers the layer node
quantized while loading) called directly in one process, greedily, with no
network, scheduler or API between them; the pipe's output must equal it token
for token. (How far int8 and int4 are from bf16 is measured by benchmarks/, not
asserted here.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import torch
from openai import AsyncOpenAI

from language_pipes.config import LayerModelConfig, parse_config
from language_pipes.models.end_model import EndModel
from language_pipes.models.segment import LayerSegment
from language_pipes.network.lanes import RequestPrefix, ServerLane
from language_pipes.network.types import NodeId
from language_pipes.node import Node
from language_pipes.pipes.frames import KIND_STEP, decode_step
from language_pipes.vocabulary import ModelId
from support.cluster import DEFAULT_MODEL, ReferenceModel, model_folder, new_network_key
from support.in_process_pipe import greedy_in_one_process, layer_only_node, start_pipe
from support.node_process import free_port

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

LAST_LAYERS = 2
NUM_LAYERS = 30
MAX_TOKENS = 24
MESSAGES = [{"role": "user", "content": "Name three colours of the rainbow."}]


@dataclass
class LastLayersRun:
    origin: Node
    layer: Node
    step_ranges: set[tuple[int, int]]
    text: str
    completion_tokens: int
    finish_reason: str


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def run(
    tmp_path_factory: pytest.TempPathFactory, model_store_dir: Path
) -> AsyncIterator[LastLayersRun]:
    patch = pytest.MonkeyPatch()
    patch.setenv("LP_APP_DIR", str(tmp_path_factory.mktemp("last-layers-app")))
    patch.setenv("LP_MODEL_DIR", str(model_store_dir))
    step_ranges: set[tuple[int, int]] = set()
    original_lane_open = ServerLane.open

    def recording_lane_open(self: ServerLane, prefix: RequestPrefix, *arguments: Any) -> list[bytes]:
        header, payload = original_lane_open(self, prefix, *arguments)
        if prefix.kind == KIND_STEP:
            step = decode_step(header)
            step_ranges.add((step.start_layer, step.end_layer))
        return [header, payload]

    patch.setattr(ServerLane, "open", recording_lane_open)
    key, origin_peer_port = new_network_key(), free_port()
    origin = Node(
        parse_config(
            {
                "node_id": "origin",
                "job_port": free_port(),
                "peer_port": origin_peer_port,
                "network_key": key,
                "end_models": [{"model_id": DEFAULT_MODEL, "num_local_last_layers": LAST_LAYERS}],
                "torch_threads": 1,
            }
        )
    )
    layer = layer_only_node("middle", key, origin_peer_port)
    try:
        client = await start_pipe(origin, layer)
        completion = await client.chat.completions.create(
            model=DEFAULT_MODEL,
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=MAX_TOKENS,
            temperature=0,
        )
        yield LastLayersRun(
            origin,
            layer,
            step_ranges,
            completion.choices[0].message.content or "",
            completion.usage.completion_tokens if completion.usage else -1,
            completion.choices[0].finish_reason,
        )
    finally:
        await layer.stop()
        await origin.stop()
        patch.undo()


async def test_the_layer_node_hosts_only_the_middle_layers(run: LastLayersRun) -> None:
    hosted = run.layer.models[ModelId(DEFAULT_MODEL)]
    assert [(segment.start, segment.end) for segment in hosted.segments] == [(1, NUM_LAYERS - LAST_LAYERS)]
    end_model = run.origin.models[ModelId(DEFAULT_MODEL)].end_model
    assert end_model is not None and end_model.last_layers is not None
    assert end_model.last_layers.layer_range == range(NUM_LAYERS - LAST_LAYERS, NUM_LAYERS)


async def test_records_announce_the_private_last_layers_and_each_data_type(run: LastLayersRun) -> None:
    origin_record = run.layer.network.records()[NodeId("origin")]
    private = [(s.start_layer, s.end_layer) for s in origin_record.segments if s.private]
    assert private == [(NUM_LAYERS - LAST_LAYERS, NUM_LAYERS)]
    middle_record = run.origin.network.records()[NodeId("middle")]
    assert [(s.data_type, s.private) for s in middle_record.segments] == [("bfloat16", False)]


async def test_no_step_reaching_the_layer_node_runs_the_last_layers(run: LastLayersRun) -> None:
    assert run.step_ranges == {(1, NUM_LAYERS - LAST_LAYERS)}


async def test_greedy_output_still_equals_transformers(run: LastLayersRun, model_store_dir: Path) -> None:
    expected = ReferenceModel(model_folder(model_store_dir)).complete(MESSAGES, MAX_TOKENS)
    assert run.text == expected.text
    assert run.completion_tokens == len(expected.token_ids)
    assert run.finish_reason == expected.finish_reason


@dataclass
class QuantizedRun:
    data_type: str
    text: str
    completion_tokens: int
    finish_reason: str


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=["int8", "int4"])
async def quantized_run(run: LastLayersRun, request: pytest.FixtureRequest) -> QuantizedRun:
    """The layer node reloads its layers as int8 / int4; the same request goes through the mixed pipe."""
    data_type: str = request.param
    await run.layer.unload_layer_model(DEFAULT_MODEL)
    await run.layer.load_layer_model(LayerModelConfig(model_id=DEFAULT_MODEL, memory=2, data_type=data_type))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120

    def served_quantized() -> bool:
        record = run.origin.network.records().get(NodeId("middle"))
        segments = record.segments if record is not None else ()
        return [(s.data_type, s.loaded) for s in segments] == [(data_type, True)]

    while not (served_quantized() and run.origin.servable_models()):
        assert loop.time() < deadline, f"the origin never saw the {data_type} layers"
        await asyncio.sleep(0.2)
    assert run.origin.config.job_port is not None
    client = AsyncOpenAI(
        base_url=f"http://127.0.0.1:{run.origin.config.job_port}/v1", api_key="unused", max_retries=0
    )
    completion = await client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=MAX_TOKENS,
        temperature=0,
    )
    return QuantizedRun(
        data_type,
        completion.choices[0].message.content or "",
        completion.usage.completion_tokens if completion.usage else -1,
        completion.choices[0].finish_reason,
    )


def quantized_reference(end: EndModel, middle: LayerSegment) -> tuple[list[int], str]:
    """Greedy tokens and text of the end model + quantized middle layers called directly, no network."""
    assert middle.layer_range == range(1, NUM_LAYERS - LAST_LAYERS)
    generated, text, _ = greedy_in_one_process(end, middle, MESSAGES, MAX_TOKENS)
    return generated, text


async def test_a_bf16_end_node_and_a_quantized_layer_node_match_them_in_one_process(
    run: LastLayersRun, quantized_run: QuantizedRun
) -> None:
    end = run.origin.models[ModelId(DEFAULT_MODEL)].end_model
    (middle,) = run.layer.models[ModelId(DEFAULT_MODEL)].segments
    assert end is not None and end.dtype == torch.bfloat16
    assert middle.data_type == quantized_run.data_type
    tokens, text = await asyncio.to_thread(quantized_reference, end, middle)
    assert quantized_run.text == text
    assert quantized_run.completion_tokens == len(tokens)
    assert quantized_run.finish_reason == ("length" if len(tokens) == MAX_TOKENS else "stop")
