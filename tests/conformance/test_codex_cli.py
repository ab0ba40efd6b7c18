"""The Codex CLI (``codex exec``, ``wire_api = "responses"``) against this server's /v1/responses.

Codex only speaks the Responses API, streamed; it needs every stream to end
with ``response.completed`` (with the response id and usage) and whole items
in ``response.output_item.done`` (messages, and function calls, which it then
runs and answers with ``function_call_output``).

One run goes to the shared conformance node (the default model): it must
complete without a protocol error. The tool-call run has the real app on a
real socket with a scripted model behind it, because Codex has no setting for
``tool_choice`` (it always sends ``"auto"``), so only a scripted answer makes
"the model calls a tool" certain. What is tested is the protocol between Codex
and the server, not a model.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from language_pipes.engine.types import GenerationEvent, GenerationRequest
from support.app_server import AppServer
from support.codex_cli import CODEX_VERSION, codex_binary, run_codex
from support.node_process import DEFAULT_MODEL, NodeProcess
from support.scripted_engine import ScriptedCatalog, ScriptedGenerator

pytestmark = pytest.mark.slow

MODEL = "scripted/codex-model"
API_KEY = "codex-key"
MARKER = "lp-codex-ok"
SHELL_CALL = json.dumps({"name": "exec_command", "arguments": {"cmd": f"echo {MARKER}"}})


class TurnScript(ScriptedGenerator):
    """Answers with ``first`` until a tool result is in the conversation, then with ``after_tool``."""

    def __init__(self, first: str, after_tool: str) -> None:
        super().__init__(MODEL, list(first), context_length=200_000)
        self.first = list(first)
        self.after_tool = list(after_tool)

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        seen_tool_result = any("exec_command" in str(m["content"]) for m in self.last_messages[1:])
        self.pieces = self.after_tool if seen_tool_result and len(self.records) > 0 else self.first
        return super().generate(request)


@pytest.fixture
def served() -> Iterator[tuple[AppServer, TurnScript]]:
    generator = TurnScript(SHELL_CALL, "The command printed the marker.")
    with AppServer(ScriptedCatalog(generator), api_keys=[API_KEY]) as server:
        yield server, generator


def test_codex_binary_is_the_pinned_one() -> None:
    binary = codex_binary()
    assert binary.exists(), f"{binary} is missing: scripts/setup.sh installs it"
    version = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, check=True, timeout=60
    )
    assert version.stdout.strip() == f"codex-cli {CODEX_VERSION}"


def test_codex_exec_against_the_real_node_completes(tmp_path: Path, api_node: NodeProcess) -> None:
    """The default model behind a real node: the turn completes with usage and no protocol error."""
    run = run_codex(
        tmp_path,
        base_url=api_node.base_url,
        model=DEFAULT_MODEL,
        api_key=api_node.api_keys[0],
        prompt="Say hi.",
        timeout=480,
    )
    assert run.returncode == 0, run.describe()
    assert not run.of_type("error") and not run.of_type("turn.failed"), run.describe()
    (completed,) = run.of_type("turn.completed")
    assert completed["usage"]["input_tokens"] > 0 and completed["usage"]["output_tokens"] > 0, run.describe()


def test_codex_exec_runs_a_well_formed_tool_call(
    tmp_path: Path, served: tuple[AppServer, TurnScript]
) -> None:
    server, generator = served
    run = run_codex(
        tmp_path, base_url=server.base_url, model=MODEL, api_key=API_KEY, prompt=f"Run: echo {MARKER}"
    )
    assert run.returncode == 0, run.describe()
    assert run.of_type("turn.completed") and not run.of_type("error"), run.describe()
    commands = run.completed_items("command_execution")
    assert len(commands) == 1 and MARKER in commands[0]["command"], run.describe()
    assert commands[0]["exit_code"] == 0 and MARKER in commands[0]["aggregated_output"], run.describe()
    # Codex answered the call: its result is in the second request's conversation.
    assert len(generator.records) == 2, run.describe()
    assert [item["text"] for item in run.completed_items("agent_message")] == [
        "The command printed the marker."
    ], run.describe()
