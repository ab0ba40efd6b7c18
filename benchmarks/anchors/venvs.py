"""Separate virtualenvs under benchmarks/.venvs/ for anchors whose packages must not touch the project's env.

Each venv is built once by a pinned list of pip steps; the outcome (ready, or the reason it failed)
is recorded in ``setup.json`` inside the venv so later suite runs do not retry a failed build
unless asked to. Usage: ``python benchmarks/anchors/venvs.py lp250 llama_cpp [--retry]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import filelock

VENVS_DIR = Path(__file__).resolve().parent.parent / ".venvs"

VenvName = Literal["lp250", "llama_cpp"]


@dataclass(frozen=True)
class VenvRecipe:
    """The pip steps that build one anchor's virtualenv, in order, and the time allowed for all of them."""

    name: VenvName
    pip_steps: tuple[tuple[str, ...], ...]
    time_limit_s: float
    build_env: tuple[tuple[str, str], ...] = ()


RECIPES: dict[VenvName, VenvRecipe] = {
    # torch first, pinned to the CPU build this machine has, so language-pipes does not pull a CUDA one.
    "lp250": VenvRecipe("lp250", (("torch==2.13.0",), ("language-pipes==2.5.0",)), 900),
    # llama-cpp-python compiles llama.cpp from source; [server] adds its OpenAI-compatible HTTP server.
    # Only the library is built (no multimodal tool, tests or examples) to keep the compile short.
    "llama_cpp": VenvRecipe(
        "llama_cpp",
        (("llama-cpp-python[server]",),),
        1800,
        (
            ("CMAKE_ARGS", "-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"),
            ("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1)),
        ),
    ),
}


@dataclass(frozen=True)
class VenvState:
    """Whether an anchor's virtualenv is usable, with its python and, when not, why."""

    name: VenvName
    ready: bool
    python: Path
    reason: str


def venv_python(name: VenvName) -> Path:
    return VENVS_DIR / name / "bin" / "python"


def state_of(name: VenvName) -> VenvState:
    """What the last setup of ``name`` recorded; 'not set up' when it never ran."""
    record = VENVS_DIR / name / "setup.json"
    if not record.exists():
        return VenvState(name, False, venv_python(name), "not set up (run benchmarks/anchors/venvs.py)")
    data = json.loads(record.read_text())
    return VenvState(name, bool(data["ready"]), venv_python(name), str(data["reason"]))


def ensure(name: VenvName, *, retry_failed: bool = False) -> VenvState:
    """Build the venv unless a previous build is recorded (ready, or failed and not retried)."""
    VENVS_DIR.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(VENVS_DIR / f"{name}.lock"):  # a second suite run waits for a build in progress
        previous = state_of(name)
        if previous.ready or (previous.reason.startswith("failed") and not retry_failed):
            return previous
        return _build(name)


def _build(name: VenvName) -> VenvState:
    recipe = RECIPES[name]
    folder = VENVS_DIR / name
    folder.parent.mkdir(parents=True, exist_ok=True)
    log_path = VENVS_DIR / f"{name}.log"
    deadline = time.monotonic() + recipe.time_limit_s
    with log_path.open("w") as log:
        steps: list[list[str]] = [[sys.executable, "-m", "venv", str(folder)]]
        steps += [
            [str(venv_python(name)), "-m", "pip", "install", *packages] for packages in recipe.pip_steps
        ]
        for command in steps:
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            remaining = deadline - time.monotonic()
            try:
                completed = subprocess.run(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=max(remaining, 1),
                    env={**os.environ, **dict(recipe.build_env)},
                )
            except subprocess.TimeoutExpired:
                # a build past its time budget is an outcome to report, not a crash of the suite
                return _record(
                    name, False, f"failed: '{' '.join(command[-1:])}' took over {recipe.time_limit_s:.0f} s"
                )
            if completed.returncode != 0:
                tail = log_path.read_text().strip().splitlines()[-1:] or [""]
                return _record(
                    name,
                    False,
                    f"failed: {' '.join(command[1:])} exited {completed.returncode}: {tail[0][:200]}",
                )
    return _record(name, True, "ready")


def _record(name: VenvName, ready: bool, reason: str) -> VenvState:
    record = VENVS_DIR / name / "setup.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"ready": ready, "reason": reason}))
    return VenvState(name, ready, venv_python(name), reason)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="+", choices=sorted(RECIPES))
    parser.add_argument("--retry", action="store_true", help="rebuild venvs whose last build failed")
    args = parser.parse_args()
    for name in args.names:
        state = ensure(name, retry_failed=args.retry)
        print(f"{name}: {state.reason} ({state.python})")


if __name__ == "__main__":
    main()
