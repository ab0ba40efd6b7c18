#!/usr/bin/env bash
# Set up everything, then run the whole test suite (unit, multi-process integration, OpenAI SDK conformance).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m ruff check src tests benchmarks
exec .venv/bin/python -m pytest "$@"
