"""A quantized pipe of two real node processes serving through the ``openai`` SDK.

An end node (``data_type = "int4"``: its layer 0 in int4, its head in int8, the
embedding exact) and a layer node hosting layers 1-29 in int4. Greedy output must
equal the same quantized model in one process: this test process loads the default
model's own files at int4 itself (its own end model and one segment of layers
1-29, nothing read from the nodes) and decodes greedily by calling them directly,
with no network, scheduler or API between them. Quantizing is deterministic, so
both sides hold the same packed weights; the pipe may only move bf16 hidden states
between them, and must not change a token.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from openai import OpenAI

from language_pipes.models.end_model import EndModel
from language_pipes.models.partial import ModelSource
from language_pipes.models.quantization import QuantizedLinear, weight_format
from language_pipes.models.segment import LayerSegment
from support.cluster import DEFAULT_MODEL, hosted_layers, model_folder, new_network_key
from support.in_process_pipe import greedy_in_one_process
from support.node_process import NodeLauncher, NodeProcess

pytestmark = pytest.mark.slow

DATA_TYPE = "int4"
MAX_TOKENS = 24
MESSAGES = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "Why is the sky blue?"},
]


@dataclass
class QuantizedPipe:
    end: NodeProcess
    layer: NodeProcess
    reference_end: EndModel
    reference_middle: LayerSegment

    def client(self) -> OpenAI:
        return OpenAI(base_url=self.end.base_url, api_key="unused", max_retries=0, timeout=120)


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int
    finish_reason: str


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory, model_store_dir: Path) -> Iterator[QuantizedPipe]:
    """The two nodes, and (loaded while they start) the default model at int4 in this process."""
    launcher = NodeLauncher(tmp_path_factory.mktemp("quantized-pipe"), model_store_dir)
    key = new_network_key()
    try:
        end = launcher.start(
            "end",
            network_key=key,
            end_models=[{"model_id": DEFAULT_MODEL, "data_type": DATA_TYPE}],
        )
        layer = launcher.start(
            "layers",
            with_api=False,
            network_key=key,
            layer_models=[{"model_id": DEFAULT_MODEL, "memory": 2, "data_type": DATA_TYPE}],
            bootstrap_nodes=[{"address": "127.0.0.1", "port": end.peer_port}],
        )
        torch.set_num_threads(1)
        folder = model_folder(model_store_dir)
        source = ModelSource.open(folder)
        weights = weight_format(DATA_TYPE)
        reference_end = EndModel("reference", folder, num_local_layers=1, source=source, weights=weights)
        reference_middle = LayerSegment(
            source.with_weights(weights), 1, source.num_layers, weights.activation_dtype, torch.device("cpu")
        )
        end.wait_until_serving()
        yield QuantizedPipe(end, layer, reference_end, reference_middle)
    finally:
        launcher.stop_all()


def _complete_in_one_process(
    end: EndModel, middle: LayerSegment, messages: list[dict[str, str]]
) -> Completion:
    """Greedy decoding through the reference's end model and segment called directly."""
    generated, text, finish_reason = greedy_in_one_process(end, middle, messages, MAX_TOKENS)
    return Completion(text, len(generated), finish_reason)


def test_both_sides_hold_int4_layers_and_an_int8_head(pipe: QuantizedPipe) -> None:
    end, middle = pipe.reference_end, pipe.reference_middle
    assert middle.data_type == DATA_TYPE
    assert isinstance(middle.layers[0].mlp.down_proj, QuantizedLinear)
    assert isinstance(end.local_layers.layers[0].mlp.down_proj, QuantizedLinear)
    assert isinstance(end.head, QuantizedLinear) and end.head.bits == 8
    assert hosted_layers(pipe.layer) == range(1, 30)


def test_greedy_output_equals_the_quantized_model_in_one_process(pipe: QuantizedPipe) -> None:
    completion = pipe.client().chat.completions.create(
        model=DEFAULT_MODEL,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=MAX_TOKENS,
        temperature=0,
    )
    expected = _complete_in_one_process(pipe.reference_end, pipe.reference_middle, MESSAGES)
    choice = completion.choices[0]
    assert choice.message.content == expected.text
    assert completion.usage is not None and completion.usage.completion_tokens == expected.tokens
    assert choice.finish_reason == expected.finish_reason
    assert expected.tokens > 3, "an empty answer would not show that the two agree"
