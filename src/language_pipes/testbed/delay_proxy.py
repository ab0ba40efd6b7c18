"""A userspace TCP proxy that delays every chunk by a fixed time in each direction, in order.

The kernels these tests run on have no ``netem`` qdisc, so a link's latency is
made here instead: each accepted connection gets a connection to its target,
and every chunk read from one side is written to the other ``delay_s`` after
it arrived. Chunks of one direction keep their order (one writer per
direction, first in first out); nothing is dropped, reordered or rate-limited.
A proxy in front of a node's peer and lane ports, with ``delay_s`` = RTT / 2,
gives every round trip to that node one extra RTT.

Run it as a process (in a network namespace, see :mod:`language_pipes.testbed.netns`)::

    python -m language_pipes.testbed.delay_proxy --delay-ms 10 10.0.0.2:5000=127.0.0.1:5000 ...

It prints ``READY`` once every listener is bound and runs until killed. A line
``DELAY <ms>`` on its standard input changes the delay of chunks read from then
on (answered ``DELAY <ms>``); chunks already held keep their time, so nothing
overtakes anything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

CHUNK_BYTES = 256 * 1024


@dataclass(frozen=True)
class Forward:
    """Listen on ``listen_host:listen_port``; connect each client to ``target_host:target_port``."""

    listen_host: str
    listen_port: int
    target_host: str
    target_port: int

    @classmethod
    def parse(cls, text: str) -> Forward:
        """``HOST:PORT=HOST:PORT`` (listen = target)."""
        listen, _, target = text.partition("=")
        listen_host, _, listen_port = listen.rpartition(":")
        target_host, _, target_port = target.rpartition(":")
        if not (listen_host and target_host and listen_port.isdigit() and target_port.isdigit()):
            raise ValueError(f"not HOST:PORT=HOST:PORT: {text!r}")
        return cls(listen_host, int(listen_port), target_host, int(target_port))


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: Callable[[], float]
) -> None:
    """Copy ``reader`` to ``writer``, each chunk ``delay_s()`` after it was read; EOF travels the same way."""
    held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def read_side() -> None:
        while True:
            try:
                chunk = await reader.read(CHUNK_BYTES)
            except ConnectionError:
                chunk = b""  # a reset reaches the other side as the end of the stream, delayed like data
            await held.put((time.monotonic() + delay_s(), chunk))
            if not chunk:
                return

    async def write_side() -> None:
        while True:
            due, chunk = await held.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not chunk:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(chunk)
            await writer.drain()

    reading = asyncio.create_task(read_side())
    try:
        await write_side()
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):  # cancelled just above: the copy is over
            await reading


class DelayProxy:
    """Every :class:`Forward` served in this event loop with ``delay_s`` per direction."""

    def __init__(self, forwards: list[Forward], delay_s: float) -> None:
        self.forwards = forwards
        self.delay_s = delay_s
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()

    def _delay(self) -> float:
        return self.delay_s

    async def start(self) -> None:
        for forward in self.forwards:
            server = await asyncio.start_server(
                lambda r, w, f=forward: self._accept(r, w, f), forward.listen_host, forward.listen_port
            )
            self._servers.append(server)

    @property
    def ports(self) -> list[int]:
        """The bound listening ports, in the order of ``forwards`` (useful with port 0)."""
        return [server.sockets[0].getsockname()[1] for server in self._servers]

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()

    async def _accept(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter, forward: Forward
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        target_writer: asyncio.StreamWriter | None = None
        try:
            target_reader, target_writer = await asyncio.open_connection(
                forward.target_host, forward.target_port
            )
            async with asyncio.TaskGroup() as copies:
                copies.create_task(_pump(client_reader, target_writer, self._delay))
                copies.create_task(_pump(target_reader, client_writer, self._delay))
        except* OSError:
            pass  # the target refused or a side went away: closing both ends below is all a link does
        finally:
            self._connections.discard(task)
            for writer in (client_writer, target_writer):
                if writer is not None:
                    writer.close()


async def _serve(forwards: list[Forward], delay_s: float) -> None:
    proxy = DelayProxy(forwards, delay_s)
    await proxy.start()
    print("READY", *proxy.ports, flush=True)
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    while line := await commands.readline():
        word, _, value = line.decode().strip().partition(" ")
        if word == "DELAY":
            proxy.delay_s = float(value) / 1000
            print("DELAY", value, flush=True)
    await asyncio.Event().wait()  # standard input closed: keep proxying until killed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=float, required=True, help="delay of each direction")
    parser.add_argument("forwards", nargs="+", type=Forward.parse, help="LISTEN_HOST:PORT=TARGET_HOST:PORT")
    arguments = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a person stops it
        asyncio.run(_serve(arguments.forwards, arguments.delay_ms / 1000))


if __name__ == "__main__":
    main()
