#!/usr/bin/env bash
# Set up everything, then run the whole test suite (unit, multi-process integration, OpenAI SDK conformance).
set -euo pipefail
cd "$(dirname "$0")/.."
LP_SETUP_DEFER_GEMMA=1 bash scripts/setup.sh
# The second embedded model converts (~75 s of one core) while the first tests run; a test that needs
# it waits on the model store's lock, and the slow phase starts only once it is done.
gemma_log=$(mktemp)
.venv/bin/python -m language_pipes.models.default_model google/gemma-3-270m >"$gemma_log" 2>&1 &
gemma_setup=$!
wait_for_gemma() {
    if ! wait "$gemma_setup"; then
        cat "$gemma_log"
        echo "preparing google/gemma-3-270m failed" >&2
        exit 1
    fi
    cat "$gemma_log"
}
.venv/bin/python -m ruff check src tests benchmarks
capability=$(.venv/bin/python -c "import torch; print(torch.backends.cpu.get_cpu_capability())")
echo "CPU capability: $capability"

# pytest exit status 5 means "no test selected", which is not a failure of a phase.
status=0
run_pytest() {
    local code=0
    .venv/bin/python -m pytest "$@" || code=$?
    if [ "$code" -ne 0 ] && [ "$code" -ne 5 ]; then status=$code; fi
}

# With no selection of their own (-m, -k, -n or paths), the tests run in two phases: the fast ones compute
# on one torch thread each, so two xdist workers use both cores; the slow ones start node processes that
# use every core, so they run one at a time. With a selection, pytest runs once, as asked.
selected=false
for arg in "$@"; do
    case "$arg" in -m* | -k* | -n* | tests* | *.py*) selected=true ;; esac
done
if $selected; then
    wait_for_gemma
    run_pytest "$@"
else
    run_pytest "$@" -m "not slow" -n 2
    wait_for_gemma
    run_pytest "$@" -m slow
fi

# Kernels differ between CPU kinds (AVX-512 with native bf16 matmul, AVX2 with emulated bf16). On an
# AVX-512 machine the numerics-sensitive tests run once more on ATen's AVX2 kernels (where bf16 attention
# rounds differently), so the suite cannot pass on one kind only. An AVX2 CPU cannot take AVX-512 kernels,
# and ATen's portable ones take over 15 minutes for these tests here, so it runs them once.
case "$capability" in
    AVX512*)
        echo "numerics tests again with ATEN_CPU_CAPABILITY=avx2"
        ATEN_CPU_CAPABILITY=avx2 run_pytest "$@" -m numerics
        ;;
esac
exit "$status"
