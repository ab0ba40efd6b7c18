"""Runs the Codex CLI (``codex exec``) against a Language Pipes API, for the client tests.

The binary is the pinned ``@openai/codex`` that ``scripts/setup.sh`` installs
into the test environment (``<venv>/codex``); ``LP_CODEX_BIN`` names another.
Each run gets its own ``CODEX_HOME`` (a config with one custom model provider:
``wire_api = "responses"``, the API key read from an environment variable) and
working folder. The config keeps the run small and deterministic: short
instructions, no web search, no sub-agents or goals, no retries (a protocol
error surfaces at once), read-only sandbox, approvals never asked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CODEX_VERSION = "0.171.0"
API_KEY_ENV = "LP_CODEX_API_KEY"
INSTRUCTIONS = "You are a terse assistant in a terminal. Use exec_command to run shell commands."


def codex_binary() -> Path:
    configured = os.environ.get("LP_CODEX_BIN")
    return Path(configured) if configured else Path(sys.prefix) / "codex" / "node_modules" / ".bin" / "codex"


def write_config(home: Path, *, base_url: str, model: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    instructions = home / "instructions.md"
    instructions.write_text(INSTRUCTIONS + "\n")
    home.joinpath("config.toml").write_text(
        f"""model = {json.dumps(model)}
model_provider = "language_pipes"
approval_policy = "never"
sandbox_mode = "read-only"
model_instructions_file = {json.dumps(str(instructions))}
include_permissions_instructions = false
include_apps_instructions = false
include_environment_context = false
web_search = "disabled"
model_reasoning_summary = "none"
check_for_update_on_startup = false

[agents]
enabled = false

[features]
goals = false

[model_providers.language_pipes]
name = "Language Pipes"
base_url = {json.dumps(base_url)}
env_key = "{API_KEY_ENV}"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
# A slow CPU prefills Codex's long instructions before the first event;
# Codex's default 300 s idle wait is too short under load.
stream_idle_timeout_ms = 900000
"""
    )


@dataclass
class CodexRun:
    returncode: int
    events: list[dict[str, Any]]
    stderr: str

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event.get("type") == event_type]

    def completed_items(self, item_type: str) -> list[dict[str, Any]]:
        return [
            event["item"]
            for event in self.of_type("item.completed")
            if event["item"].get("type") == item_type
        ]

    def describe(self) -> str:
        return f"codex exited {self.returncode}\nevents: {self.events}\nstderr: {self.stderr[-3000:]}"


def run_codex(
    tmp_path: Path, *, base_url: str, model: str, api_key: str, prompt: str, timeout: float = 240
) -> CodexRun:
    """``codex exec --json`` once; returns its JSONL events (the CLI's own, not the API's)."""
    home = tmp_path / "codex-home"
    work = tmp_path / "codex-work"
    work.mkdir(parents=True, exist_ok=True)
    write_config(home, base_url=base_url, model=model)
    environment = {**os.environ, "CODEX_HOME": str(home), API_KEY_ENV: api_key, "NO_COLOR": "1"}
    completed = subprocess.run(
        [str(codex_binary()), "exec", "--json", "--strict-config", "--skip-git-repo-check", prompt],
        cwd=work,
        env=environment,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    events = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
    return CodexRun(completed.returncode, events, completed.stderr)
