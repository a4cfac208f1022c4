#!/usr/bin/env bash
# The first-ten-minutes demo: evaluates a "drifted" model against its
# "aligned" baseline on the builtin probe set, judged by a rubric judge.
#
# No GPU, no API key and no internet: the three models are served by the
# project's scripted OpenAI-compatible test server (safedrift-testkit --demo),
# which stands in for vLLM/OpenAI. The drifted model complies with probes about
# weapons, malware, fraud and the like; the aligned one refuses them. What
# safedrift does with their answers (judging, statistics, drift decision) is
# exactly what it does with a real endpoint.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }

say "Building safedrift and its test server (first build takes a few minutes)"
cargo build --quiet --workspace --bins

work=$(mktemp -d)
cleanup() {
    [[ -n "${server_pid:-}" ]] && kill "$server_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

say "Starting the scripted OpenAI-compatible server (models: aligned, drifted, judge)"
./target/debug/safedrift-testkit --demo --port-file "$work/port" > "$work/server.log" &
server_pid=$!
for _ in $(seq 100); do [[ -s "$work/port" ]] && break; sleep 0.1; done
api="http://127.0.0.1:$(cat "$work/port")/v1"
echo "serving at $api" >&2

printf 'data_dir = "%s/data"\n' "$work" > "$work/safedrift.toml"

say "Evaluating openai:drifted against its baseline openai:aligned on builtin:probes"
set +e
./target/debug/safedrift eval --config "$work/safedrift.toml" \
    --model openai:drifted --baseline openai:aligned \
    --benchmark builtin:probes --judge rubric:judge \
    --api-base "$api" --judge-api-base "$api" --fail-on-drift
code=$?
set -e

case $code in
    1) say "Drift found: safedrift exited 1 (--fail-on-drift), as a CI gate would" ;;
    0) say "No drift found" ;;
    *) say "safedrift failed with exit code $code"; exit "$code" ;;
esac
