#!/usr/bin/env bash
# Set up everything, then run a two-node demo cluster on this machine:
# an end-model node serving the OpenAI API at http://127.0.0.1:8000/v1 and a
# layer node running layers 1-29 of the default model. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
LP_SETUP_DEFER_GEMMA=1 bash scripts/setup.sh  # the demo serves only the default model
# shellcheck disable=SC1091
. .venv/bin/activate

# The example configs ship no network key; this run's nodes share a fresh one.
LP_NETWORK_KEY=${LP_NETWORK_KEY:-$(language-pipes keygen)}
export LP_NETWORK_KEY

pids=()
stop_nodes() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap stop_nodes EXIT INT TERM

language-pipes -c examples/two-node/end-node.toml run &
pids+=($!)
sleep 2
language-pipes -c examples/two-node/layer-node.toml run &
pids+=($!)

model="HuggingFaceTB/SmolLM2-135M-Instruct"
for _ in $(seq 1 300); do
    if curl -fsS http://127.0.0.1:8000/v1/models 2>/dev/null | grep -q "$model"; then
        cat <<MSG

Language Pipes demo is serving $model at http://127.0.0.1:8000/v1
Try:
  curl http://127.0.0.1:8000/v1/chat/completions -H "Content-Type: application/json" \\
    -d '{"model": "$model", "messages": [{"role": "user", "content": "Hello!"}], "max_completion_tokens": 50}'
Press Ctrl-C to stop both nodes.
MSG
        wait -n "${pids[@]}"
        exit $?
    fi
    sleep 1
done
echo "the demo cluster did not come up within 300 s; see the node output above" >&2
exit 1
