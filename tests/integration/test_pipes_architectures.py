"""Tiny random models of the new architectures, served across two real nodes as a new user would.

Each model folder (tests/support/tiny_models.py, with a one-line chat template)
goes into the store; an end node keeps layer 0 of each and a layer node hosts
the rest. Greedy chat output through the openai SDK must be token-identical to
transformers in one process (bfloat16 on both sides, as nodes run on CPU).
Qwen3.5's first decode step used to fail with a 503 (the sequence unknown to
the cache of its linear-attention layers).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from openai import OpenAI

from support.cluster import ReferenceModel, hosted_layers
from support.node_process import NodeLauncher, NodeProcess
from support.tiny_models import TinyFamily, build_tiny_model

pytestmark = pytest.mark.slow

FAMILIES: tuple[TinyFamily, ...] = ("ministral3", "qwen3_5_text", "gemma4_text", "ministral")
CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }} {% endfor %}"
MESSAGES = [{"role": "user", "content": "w17 w42 w99 w5 w63 w128 w7 w77 w31 w150 w12"}]
MAX_TOKENS = 12


def _model_id(family: TinyFamily) -> str:
    return f"tiny-org/tiny-{family.replace('_', '-')}"


@dataclass
class Cluster:
    end: NodeProcess
    layers: NodeProcess
    folders: dict[TinyFamily, Path]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("architectures")
    store = root / "models"
    folders = {
        family: build_tiny_model(family, store / _model_id(family).replace("/", "--")) for family in FAMILIES
    }
    for folder in folders.values():
        _add_chat_template(folder)
    launcher = NodeLauncher(root / "nodes", store)
    model_ids = [_model_id(family) for family in FAMILIES]
    try:
        end = launcher.start("end", end_models=model_ids)
        layers = launcher.start(
            "layers",
            with_api=False,
            layer_models=[{"model_id": model_id, "memory": 0.5} for model_id in model_ids],
            bootstrap_nodes=[{"address": "127.0.0.1", "port": end.peer_port}],
        )
        for model_id in model_ids:
            end.wait_until_serving(model_id)
        yield Cluster(end, layers, folders)
    finally:
        launcher.stop_all()


def _add_chat_template(folder: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_chat_output_matches_transformers_in_one_process(cluster: Cluster, family: TinyFamily) -> None:
    expected = ReferenceModel(cluster.folders[family]).complete(MESSAGES, MAX_TOKENS)
    client = OpenAI(base_url=cluster.end.base_url, api_key="unused", max_retries=0, timeout=120)
    completion = client.chat.completions.create(
        model=_model_id(family),
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=MAX_TOKENS,
        temperature=0,
    )
    assert completion.usage is not None
    assert completion.usage.completion_tokens == len(expected.token_ids)
    assert completion.choices[0].message.content == expected.text
    assert len(set(expected.token_ids)) > 1
    assert hosted_layers(cluster.layers) == range(1, 4), cluster.layers.output()
