"""The Gemma 3 270M GGUF (``google/gemma-3-270m``) served by two real node processes.

The end node runs layers 0-6 itself (sliding-window layers and the full-attention layer
5); the layer node hosts 1-17 as layer nodes do, and the pipe takes 7-17 from it (full
attention at 11 and 17), so both kinds of layer, each with its own rope, run on both
sides of the split.
Greedy output through the ``openai`` SDK must be token-identical to transformers in
one process on the same converted folder and chat template.

That GGUF is the *pretrained* (not instruction-tuned) model: greedily it never emits
``<end_of_turn>`` or ``<eos>`` (it echoes the turn and ends it with a rare token), so
the early stop here is a stop sequence; the stop token ids are checked on the folder in
tests/unit/test_embedded_gemma.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from openai import OpenAI

from language_pipes.models.default_model import prepare_embedded_model
from language_pipes.models.embedded import GEMMA_MODEL_ID
from support.cluster import ReferenceCompletion, ReferenceModel, hosted_layers, new_network_key
from support.node_process import NodeLauncher, NodeProcess
from support.reference_checks import assert_completion_matches_reference, assert_stream_matches_reference

pytestmark = pytest.mark.slow

MAX_TOKENS = 16
END_LOCAL_LAYERS = 7
LAYER_COUNT = 18
TURN_MARKERS = ("<start_of_turn>", "<end_of_turn>")
# A system turn, so the template's folding of it into the first user turn is covered too.
MESSAGES = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
]


class CachedReference(ReferenceModel):
    """The reference, generating each (prompt, length) once: several tests compare against the same."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self._completions: dict[tuple[str, int], ReferenceCompletion] = {}

    def complete(self, messages: list[dict[str, str]], max_new_tokens: int) -> ReferenceCompletion:
        key = (repr(messages), max_new_tokens)
        if key not in self._completions:
            self._completions[key] = super().complete(messages, max_new_tokens)
        return self._completions[key]


@dataclass
class GemmaCluster:
    end: NodeProcess
    layer: NodeProcess
    reference: ReferenceModel

    def client(self) -> OpenAI:
        return OpenAI(base_url=self.end.base_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, model_store_dir: Path) -> Iterator[GemmaCluster]:
    folder = prepare_embedded_model(GEMMA_MODEL_ID, model_store_dir)  # setup.sh converted it already
    launcher = NodeLauncher(tmp_path_factory.mktemp("gemma"), model_store_dir)
    key = new_network_key()
    reference = CachedReference(folder)
    # Loading transformers' copy while the nodes start (this process mostly waits for them).
    warm = threading.Thread(target=lambda: reference.complete(MESSAGES, MAX_TOKENS), daemon=True)
    try:
        end = launcher.start(
            "end",
            network_key=key,
            end_models=[{"model_id": GEMMA_MODEL_ID, "num_local_layers": END_LOCAL_LAYERS}],
        )
        layer = launcher.start(
            "layers",
            with_api=False,
            network_key=key,
            layer_models=[{"model_id": GEMMA_MODEL_ID, "memory": 2}],
            bootstrap_nodes=[{"address": "127.0.0.1", "port": end.peer_port}],
        )
        warm.start()
        end.wait_until_serving(GEMMA_MODEL_ID)
        warm.join()
        yield GemmaCluster(end, layer, reference)
    finally:
        launcher.stop_all()


def _assert_no_turn_markers(text: str) -> None:
    for marker in TURN_MARKERS:
        assert marker not in text


def test_the_layer_node_hosts_every_layer_after_the_first(cluster: GemmaCluster) -> None:
    assert hosted_layers(cluster.layer) == range(1, LAYER_COUNT)
    assert [model.id for model in cluster.client().models.list().data] == [GEMMA_MODEL_ID]


def test_greedy_output_matches_transformers_in_one_process(cluster: GemmaCluster) -> None:
    text = assert_completion_matches_reference(
        cluster.client(), cluster.reference, MESSAGES, MAX_TOKENS, model=GEMMA_MODEL_ID
    )
    assert text.strip()
    _assert_no_turn_markers(text)


def test_streamed_greedy_output_matches_transformers(cluster: GemmaCluster) -> None:
    assert_stream_matches_reference(
        cluster.client(), cluster.reference, MESSAGES, MAX_TOKENS, include_usage=True, model=GEMMA_MODEL_ID
    )


def test_a_stop_sequence_ends_the_answer_early_with_reason_stop(cluster: GemmaCluster) -> None:
    expected = cluster.reference.complete(MESSAGES, MAX_TOKENS)
    first_line, newline, _ = expected.text.partition("\n")
    assert newline and first_line, expected.text  # the reference goes on past the first line
    completion = cluster.client().chat.completions.create(
        model=GEMMA_MODEL_ID, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0, stop=["\n"]
    )
    choice = completion.choices[0]
    assert choice.message.content == first_line
    assert choice.finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens < MAX_TOKENS
    _assert_no_turn_markers(choice.message.content or "")
