"""The delay proxy behind the netns tests: it adds at least its delay each way and keeps bytes and order."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import pytest

from language_pipes.testbed.delay_proxy import DelayProxy, Forward

DELAY_S = 0.05


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while chunk := await reader.read(65536):
        writer.write(chunk)
        await writer.drain()
    writer.close()


async def proxied_echo(delay_s: float) -> tuple[asyncio.Server, DelayProxy]:
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    target_port = server.sockets[0].getsockname()[1]
    proxy = DelayProxy([Forward("127.0.0.1", 0, "127.0.0.1", target_port)], delay_s)
    await proxy.start()
    return server, proxy


def test_forward_parses_host_port_pairs() -> None:
    assert Forward.parse("10.0.0.2:5000=127.0.0.1:5001") == Forward("10.0.0.2", 5000, "127.0.0.1", 5001)
    with pytest.raises(ValueError):
        Forward.parse("10.0.0.2:5000")


@pytest.mark.asyncio
async def test_round_trip_pays_the_delay_both_ways_and_bytes_arrive_in_order() -> None:
    server, proxy = await proxied_echo(DELAY_S)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.ports[0])
        for _ in range(3):
            started = time.monotonic()
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            assert time.monotonic() - started >= 2 * DELAY_S
        # Many small writes and a large one, back to back: the echo is exactly what was sent.
        pieces = [os.urandom(size) for size in (1, 7, 1000, 65536, 1 << 20, 3)] + [
            bytes([n]) * 10 for n in range(50)
        ]
        for piece in pieces:
            writer.write(piece)
        await writer.drain()
        sent = b"".join(pieces)
        assert await reader.readexactly(len(sent)) == sent
        # The end of the stream travels too: the echo server closes, the client reads EOF.
        writer.write_eof()
        assert await reader.read() == b""
        writer.close()
    finally:
        await proxy.stop()
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_a_refused_target_closes_the_client() -> None:
    server, proxy = await proxied_echo(0.0)
    server.close()
    await server.wait_closed()  # nothing listens on the target port any more
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.ports[0])
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    finally:
        await proxy.stop()


@pytest.mark.asyncio
async def test_the_proxy_process_takes_a_new_delay_on_its_standard_input() -> None:
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    target = server.sockets[0].getsockname()[1]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "language_pipes.testbed.delay_proxy",
        "--delay-ms",
        "0",
        f"127.0.0.1:0=127.0.0.1:{target}",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        ready = (await asyncio.wait_for(process.stdout.readline(), 60)).decode().split()
        assert ready[0] == "READY"
        process.stdin.write(b"DELAY 50\n")
        assert (await process.stdout.readline()).decode().split() == ["DELAY", "50"]
        reader, writer = await asyncio.open_connection("127.0.0.1", int(ready[1]))
        started = time.monotonic()
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        assert time.monotonic() - started >= 2 * DELAY_S
        writer.close()
    finally:
        process.kill()
        await process.wait()
        server.close()
        await server.wait_closed()
