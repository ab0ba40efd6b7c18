"""``num_local_last_layers``: the end model also runs the model's last layers, the network only the middle.

A tiny random llama (4 layers, float32) split as end model [0, 1) + [3, 4)
and a layer segment [1, 3): logits equal transformers in one process, and
greedy generation through the real Scheduler equals transformers' greedy
output. Placement and routing stop at the end model's last layers, and records
announce those layers as private (covered for placement, in no other route).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from language_pipes.config import EndModelConfig
from language_pipes.engine.generator import ModelGenerator
from language_pipes.engine.scheduler import Scheduler
from language_pipes.engine.types import Finished, GenerationRequest, SamplingParams, TextDelta
from language_pipes.models.end_model import EndModel
from language_pipes.models.segment import LayerSegment, SegmentBatch
from language_pipes.network.types import HostedSegment
from language_pipes.pipes.placement import LayerSpan, choose_span
from language_pipes.pipes.route import LocalHop, Route
from language_pipes.vocabulary import SequenceId
from language_pipes.weights.provider import end_model_modules
from support.tiny_models import build_tiny_model, reference_model

PROMPT = [1, 5, 9, 13, 17, 21, 25]
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model("llama", Path(tmp_path_factory.mktemp("tiny")) / "llama")


@pytest.fixture(scope="module")
def end(folder: Path) -> EndModel:
    return EndModel("tiny", folder, num_local_layers=1, num_local_last_layers=1, dtype=torch.float32)


@pytest.fixture(scope="module")
def middle(end: EndModel) -> LayerSegment:
    return LayerSegment(end.source, 1, 3, torch.float32, torch.device("cpu"))


def test_the_end_model_holds_the_first_and_last_layers(end: EndModel) -> None:
    assert end.local_layers.layer_range == range(0, 1)
    assert end.last_layers is not None and end.last_layers.layer_range == range(3, 4)
    assert end.shared_layers == range(1, 3)
    assert EndModelConfig(model_id="m").num_local_last_layers == 0


def test_too_many_local_layers_is_an_error_naming_both_keys(folder: Path) -> None:
    with pytest.raises(ValueError, match="num_local_layers .* num_local_last_layers"):
        EndModel("tiny", folder, num_local_layers=2, num_local_last_layers=3, dtype=torch.float32)


def test_split_logits_equal_transformers(folder: Path, end: EndModel, middle: LayerSegment) -> None:
    batch = SegmentBatch((SequenceId("a" * 32),), (0,), (len(PROMPT),))
    hidden = end.local_layers.forward(end.embed(PROMPT), batch)
    hidden = end.finish_hidden(middle.forward(hidden, batch), batch)
    logits = end.logits(hidden[0])
    with torch.no_grad():
        expected = reference_model(folder)(torch.tensor([PROMPT])).logits[0].float()
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    end.release(SequenceId("a" * 32))
    middle.release(SequenceId("a" * 32))


def test_greedy_generation_through_the_scheduler_equals_transformers(
    folder: Path, end: EndModel, middle: LayerSegment
) -> None:
    route = Route([LocalHop(middle, 1, 3)], name="middle")
    scheduler = Scheduler(end, lambda: route)
    scheduler.start()

    async def generate() -> list[int]:
        generator = ModelGenerator(end, scheduler)
        request = GenerationRequest(PROMPT, SamplingParams(temperature=0.0), max_new_tokens=NEW_TOKENS)
        tokens: list[int] = []
        async for event in generator.generate(request):
            if isinstance(event, TextDelta):
                tokens.extend(event.token_ids)
            elif isinstance(event, Finished):
                assert event.reason in ("length", "stop"), event.error
        return tokens

    try:
        tokens = asyncio.run(generate())
    finally:
        scheduler.stop()
    with torch.no_grad():
        output = reference_model(folder).generate(
            torch.tensor([PROMPT]), max_new_tokens=NEW_TOKENS, do_sample=False
        )
    expected = output[0, len(PROMPT) :].tolist()
    stop = next((i for i, token in enumerate(expected) if token in end.eos_token_ids), len(expected))
    assert tokens == expected[:stop] and tokens  # up to the first EOS, which ends the request
    assert end.local_layers.sequence_count == 0 and end.last_layers is not None
    assert end.last_layers.sequence_count == 0  # released with the sequence


def test_placement_leaves_private_last_layers_to_the_end_node() -> None:
    private = HostedSegment("m", 28, 30, True, "bfloat16", private=True)
    assert HostedSegment.from_wire(private.to_wire()) == private
    # A layer node sees the end node's last layers as covered and fills the middle only.
    covered = [LayerSpan(private.start_layer, private.end_layer)]
    assert choose_span(30, 1, covered, capacity_layers=40) == LayerSpan(1, 28)
    # An older node's record without the new fields still parses.
    legacy = {"model_id": "m", "start_layer": 1, "end_layer": 4, "loaded": True}
    assert HostedSegment.from_wire(legacy) == HostedSegment("m", 1, 4, True, None, False)


def test_an_end_node_fetches_the_modules_of_its_last_layers_too() -> None:
    modules = end_model_modules(30, 1, 2)
    assert modules[-3:] == ["model.layers.0", "model.layers.28", "model.layers.29"]
    assert end_model_modules(30, 1) == ["model.embed_tokens", "model.norm", "lm_head", "model.layers.0"]
