"""The API app on a real socket: uvicorn in a background thread of the test process.

For clients that need a URL (the Codex CLI, raw streaming clients) in front of
a scripted engine; the app, routing and streaming code are the real ones.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import uvicorn

from language_pipes.api.app import create_app
from language_pipes.api.settings import ApiSettings
from support.node_process import free_port


class AppServer:
    """The API app served by uvicorn in a background thread."""

    def __init__(self, catalog: Any, *, api_keys: list[str], settings: ApiSettings | None = None) -> None:
        app = create_app(catalog, api_keys=api_keys, max_api_jobs=4, settings=settings)
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> AppServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the API server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
