#!/usr/bin/env bash
# Set up everything, then run the whole test suite (unit, multi-process integration, OpenAI SDK conformance).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m ruff check src tests benchmarks
# Kernels differ between CPU kinds (AVX-512 with native bf16 matmul, AVX2 with emulated bf16). On an
# AVX-512 machine the numerics-sensitive tests run once more on ATen's AVX2 kernels (where bf16 attention
# rounds differently), so the suite cannot pass on one kind only. An AVX2 CPU cannot take AVX-512 kernels,
# and ATen's portable ones take over 15 minutes for these tests here, so it runs them once.
capability=$(.venv/bin/python -c "import torch; print(torch.backends.cpu.get_cpu_capability())")
echo "CPU capability: $capability"
case "$capability" in
    AVX512*) ;;
    *) exec .venv/bin/python -m pytest "$@" ;;
esac
.venv/bin/python -m pytest "$@"
echo "numerics tests again with ATEN_CPU_CAPABILITY=avx2"
status=0
ATEN_CPU_CAPABILITY=avx2 .venv/bin/python -m pytest "$@" -m numerics || status=$?
# 5: none of the tests asked for is a numerics test.
if [ "$status" -eq 5 ]; then status=0; fi
exit "$status"
