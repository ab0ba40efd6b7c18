"""Two real :class:`Node` objects in the test's own process: an origin and one layer-only node.

For tests that need to look inside a running pipe (wrap a method, read a
node's state) rather than drive node processes: :func:`layer_only_node`
builds the layer node that joins an origin, :func:`start_pipe` starts both,
waits until the origin can serve the model and returns an SDK client for it.
"""

from __future__ import annotations

import asyncio

from openai import AsyncOpenAI

from language_pipes.config import parse_config
from language_pipes.node import Node
from support.cluster import DEFAULT_MODEL
from support.node_process import free_port

PIPE_TIMEOUT_SECONDS = 300


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
