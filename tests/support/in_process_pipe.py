"""Two real :class:`Node` objects in the test's own process: an origin and one layer-only node.

For tests that need to look inside a running pipe (wrap a method, read a
node's state) rather than drive node processes: :func:`layer_only_node`
builds the layer node that joins an origin, :func:`start_pipe` starts both,
waits until the origin can serve the model and returns an SDK client for it.
:func:`greedy_in_one_process` is the reference such pipes are held to: an end
model and a layer segment called directly, with no network, scheduler or API.
"""

from __future__ import annotations

import asyncio

from openai import AsyncOpenAI

from language_pipes.config import parse_config
from language_pipes.models.end_model import EndModel
from language_pipes.models.segment import LayerSegment, SegmentBatch
from language_pipes.node import Node
from language_pipes.vocabulary import SequenceId
from support.cluster import DEFAULT_MODEL
from support.node_process import free_port

PIPE_TIMEOUT_SECONDS = 300


def greedy_in_one_process(
    end: EndModel, middle: LayerSegment, messages: list[dict[str, str]], max_tokens: int
) -> tuple[list[int], str, str]:
    """Greedy tokens, text and finish reason of ``end`` around ``middle``, called directly."""
    sequence = SequenceId("0" * 32)
    fed: list[int] = end.encode_chat(messages)  # type: ignore[arg-type]
    middle.open(sequence, len(fed) + max_tokens)  # a segment reserves KV memory per sequence
    position, generated, finish_reason = 0, [], "length"
    while len(generated) < max_tokens:
        batch = SegmentBatch((sequence,), (position,), (len(fed),))
        hidden = end.local_layers.forward(end.embed(fed), batch)
        hidden = end.finish_hidden(middle.forward(hidden, batch), batch)
        token = int(end.logits(hidden[0, -1:])[0].argmax())
        position += len(fed)
        if token in end.eos_token_ids:
            finish_reason = "stop"
            break
        generated.append(token)
        fed = [token]
    end.release(sequence)
    middle.release(sequence)
    return generated, end.tokenizer.decode(generated, skip_special_tokens=True), finish_reason


def layer_only_node(node_id: str, network_key: str, origin_peer_port: int) -> Node:
    """A node that hosts layers of the default model only (no end model, no API), joining the origin."""
    return Node(
        parse_config(
            {
                "node_id": node_id,
                "peer_port": free_port(),
                "network_key": network_key,
                "layer_models": [{"model_id": DEFAULT_MODEL, "memory": 2}],
                "bootstrap_nodes": [{"address": "127.0.0.1", "port": origin_peer_port}],
                "torch_threads": 1,
            }
        )
    )


async def start_pipe(origin: Node, layer: Node) -> AsyncOpenAI:
    """Start both nodes; once the origin can serve the model, a client of its API (no retries)."""
    await origin.start()
    await layer.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PIPE_TIMEOUT_SECONDS
    while not origin.servable_models():
        assert loop.time() < deadline, "the two in-process nodes never formed a pipe"
        await asyncio.sleep(0.2)
    assert origin.config.job_port is not None
    return AsyncOpenAI(
        base_url=f"http://127.0.0.1:{origin.config.job_port}/v1", api_key="unused", max_retries=0
    )
