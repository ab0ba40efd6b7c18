"""PeerNetwork instances in the test's own process, on loopback, with real sockets."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest_asyncio

from language_pipes.network.identity import NodeIdentity
from language_pipes.network.peer_network import PeerNetwork

Starter = Callable[..., Any]


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> float:
    """Seconds it took for ``condition`` to hold; fails the test after ``timeout``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


@pytest_asyncio.fixture
async def start_node() -> AsyncIterator[Starter]:
    """Start PeerNetworks on loopback; all of them are stopped when the test ends."""
    started: list[PeerNetwork] = []

    async def start(
        name: str,
        *,
        identity: NodeIdentity | None = None,
        bootstrap: tuple[PeerNetwork, ...] = (),
        **options: Any,
    ) -> PeerNetwork:
        network = PeerNetwork(
            identity or NodeIdentity.generate(name),
            listen_host="127.0.0.1",
            advertise_ip="127.0.0.1",
            bootstrap=[("127.0.0.1", peer.peer_port) for peer in bootstrap],
            **options,
        )
        await network.start()
        started.append(network)
        return network

    yield start
    for network in started:
        await network.stop(announce=False)


async def start_pair(start_node: Starter, **options: object) -> tuple[PeerNetwork, PeerNetwork]:
    """Two nodes on one fresh network key, once they have met: ``a`` answers, ``b`` (the origin) asks.

    ``options`` go to ``a`` only.
    """
    key = os.urandom(16)
    a = await start_node("a", network_key=key, **options)
    b = await start_node("b", network_key=key, bootstrap=(a,))
    await wait_until(lambda: "a" in b.records() and "b" in a.records(), what="a and b meeting")
    return a, b
