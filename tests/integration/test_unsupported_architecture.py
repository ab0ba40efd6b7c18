"""A real node refuses a model whose ``model_type`` has no adapter, in one line, instead of serving it.

Before, any unknown type ran on the Llama-like default adapter and could serve
garbage. The node must exit with status 1 and say which type it met and which
ones it supports.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config

from support.node_process import NodeLauncher
from support.tiny_models import _tiny_tokenizer

pytestmark = pytest.mark.slow

MODEL_ID = "tiny-org/tiny-gpt2"
EXIT_TIMEOUT_S = 120.0


def test_a_node_refuses_an_unknown_model_type_and_exits(tmp_path: Path) -> None:
    store = tmp_path / "models"
    folder = store / MODEL_ID.replace("/", "--")
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=160, n_positions=64)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    _tiny_tokenizer().save_pretrained(folder)

    launcher = NodeLauncher(tmp_path / "nodes", store)
    try:
        node = launcher.start("gpt2-end", end_models=[MODEL_ID])
        deadline = time.monotonic() + EXIT_TIMEOUT_S
        while node.is_running() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not node.is_running(), f"the node kept running:\n{node.output()}"
        output = node.output()
        assert node.process.returncode == 1, output
        assert "model_type 'gpt2' is not supported; supported: " in output
        assert "llama" in output and "gemma4_text" in output
        assert "Traceback" not in output
    finally:
        launcher.stop_all()
