"""``transformers serve --continuous-batching`` (paged attention, one process) on the local model folder.

It runs from the project's own environment (transformers 5.24 with fastapi and uvicorn already
installed). Its paged KV cache is given a fixed number of blocks: left to its default on CPU it
sizes the cache from free memory and reserves several GB.
"""

from __future__ import annotations

import importlib.util
import math
import sys

from anchors.servers import (
    AnchorUnavailable,
    BenchSettings,
    RunningServer,
    free_port,
    start_process,
    thread_environment,
    wait_until_answering,
)

BLOCK_TOKENS = 32


def start(settings: BenchSettings) -> RunningServer:
    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise AnchorUnavailable(f"transformers[serving] packages missing: {', '.join(missing)}")
    port = free_port()
    blocks = math.ceil(settings.kv_pool_tokens / BLOCK_TOKENS)
    log = settings.scratch / "transformers_serve.log"
    command = [
        sys.executable, "-m", "transformers.cli.transformers", "serve", str(settings.model_folder),
        "--continuous-batching", "--cb-block-size", str(BLOCK_TOKENS), "--cb-num-blocks", str(blocks),
        "--dtype", "bfloat16", "--device", "cpu", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    process = start_process(command, log, thread_environment(settings.threads))
    server = RunningServer(
        base_url=f"http://127.0.0.1:{port}/v1",
        model=str(settings.model_folder),
        processes={"server": process},
        logs={"server": log},
        notes=[
            f"paged KV cache: {blocks} blocks of {BLOCK_TOKENS} tokens",
            f"OMP_NUM_THREADS={settings.threads}",
        ],
    )
    try:
        wait_until_answering(server, 600)
    except BaseException:
        server.stop()
        raise
    return server
