"""Multi-node clusters for the pipe tests, built on :class:`support.node_process.NodeLauncher`.

An *end node* holds the default model's end model and serves the API; a *layer
node* holds decoder layers within a ``memory`` budget and joins the network
through ``[[bootstrap_nodes]]``. :class:`ReferenceModel` is the correctness
anchor: transformers in this process, greedy, on the same chat-rendered prompt.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from language_pipes.cli import new_network_key
from support.node_process import DEFAULT_MODEL, NodeLauncher, NodeProcess

__all__ = [
    "DEFAULT_MODEL",
    "ReferenceCompletion",
    "ReferenceModel",
    "full_output",
    "hosted_layers",
    "model_folder",
    "new_network_key",
    "start_end_node",
    "start_layer_node",
    "wait_for_output",
]

LAYER_LINE = re.compile(r"loading layers (\d+)-(\d+) of (\S+)")
OUTPUT_TIMEOUT_SECONDS = 300.0


def model_folder(model_dir: Path, model_id: str = DEFAULT_MODEL) -> Path:
    """Where the model store keeps ``model_id`` (``org--name``), once a node has prepared it."""
    return model_dir / model_id.replace("/", "--")


def start_end_node(launcher: NodeLauncher, node_id: str, **settings: Any) -> NodeProcess:
    """A node with the default model's end model (tokenizer, embedding, head, layer 0) and the API."""
    return launcher.start(node_id, end_models=[DEFAULT_MODEL], **settings)


def start_layer_node(
    launcher: NodeLauncher,
    node_id: str,
    bootstrap: NodeProcess,
    memory_gigabytes: float,
    **settings: Any,
) -> NodeProcess:
    """A node hosting as many of the default model's layers as ``memory_gigabytes`` allows, no API."""
    return launcher.start(
        node_id,
        with_api=False,
        layer_models=[{"model_id": DEFAULT_MODEL, "memory": memory_gigabytes}],
        bootstrap_nodes=[{"address": "127.0.0.1", "port": bootstrap.peer_port}],
        **settings,
    )


def wait_for_output(
    node: NodeProcess, pattern: str, timeout: float = OUTPUT_TIMEOUT_SECONDS
) -> re.Match[str]:
    """Block until the node's log matches ``pattern`` (a regex); fail with its output otherwise."""
    compiled = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = compiled.search(full_output(node))
        if found is not None:
            return found
        if not node.is_running():
            raise AssertionError(
                f"node {node.node_id} exited with {node.process.returncode} before logging {pattern!r}:\n"
                f"{node.output()}"
            )
        time.sleep(0.2)
    raise AssertionError(
        f"node {node.node_id} did not log {pattern!r} within {timeout:.0f} s:\n{node.output()}"
    )


def hosted_layers(node: NodeProcess, timeout: float = OUTPUT_TIMEOUT_SECONDS) -> range:
    """The decoder layers a layer node chose to host, read from its ``loading layers A-B`` log line."""
    found = wait_for_output(node, LAYER_LINE.pattern, timeout)
    return range(int(found.group(1)), int(found.group(2)) + 1)


def full_output(node: NodeProcess) -> str:
    """Everything the node printed so far (``NodeProcess.output`` keeps only the tail)."""
    try:
        return node.log_path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


@dataclass(frozen=True)
class ReferenceCompletion:
    """Greedy continuation by transformers: generated ids (EOS excluded) and their text."""

    token_ids: tuple[int, ...]
    text: str
    finish_reason: str


class ReferenceModel:
    """The default model in this process with transformers, bf16, one thread: what the pipe must match."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @cached_property
    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.folder)

    @cached_property
    def model(self) -> Any:
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(1)
        return AutoModelForCausalLM.from_pretrained(self.folder, dtype=torch.bfloat16).eval()

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The chat template rendered as the end model renders it, then tokenized."""
        rendered = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(self.tokenizer.encode(rendered, add_special_tokens=False))

    def complete(self, messages: list[dict[str, str]], max_new_tokens: int) -> ReferenceCompletion:
        import torch

        prompt = self.prompt_ids(messages)
        with torch.inference_mode():
            output = self.model.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                do_sample=False,
                max_new_tokens=max_new_tokens,
            )
        generated = output[0, len(prompt) :].tolist()
        eos_ids = self._eos_ids()
        finish_reason = "length"
        for index, token in enumerate(generated):
            if token in eos_ids:
                generated = generated[:index]
                finish_reason = "stop"
                break
        text = self.tokenizer.decode(generated, skip_special_tokens=True)
        return ReferenceCompletion(tuple(generated), text, finish_reason)

    def _eos_ids(self) -> set[int]:
        configured = self.model.generation_config.eos_token_id
        ids = set(configured) if isinstance(configured, list) else {configured}
        ids.add(self.tokenizer.eos_token_id)
        return {token for token in ids if token is not None}
