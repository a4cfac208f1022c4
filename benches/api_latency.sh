#!/usr/bin/env bash
# Latency benchmark of the HTTP API on a long history.
#
# Fills a store under target/ with 100,000 runs and 10,000,000 per-prompt
# results (100 models x 1,000 checkpoint runs x 100 prompts, synthetic but
# shaped like real runs), prints its size on disk, then 16 concurrent
# clients measure p50/p99 of
#   GET /api/v1/runs?model=...&limit=50
#   GET /api/v1/runs/{id}
#   GET /api/v1/runs/{id}/results?category=...&min_score=...
# next to two references from the same run: GET /assets/app.css (the HTTP
# stack and its middleware alone; the last column is p99 / its p99) and a model's runs listed by
# scanning every run instead of the index. Target: p99 < 20 ms.
# A measurement, not a test: it never fails on the numbers.
#
# Usage: benches/api_latency.sh [MODELS RUNS_PER_MODEL PROMPTS CLIENTS REQUESTS]
# Environment: KEEP_DATA=1 keeps the store (target/api-bench) for another run.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=target/api-bench
cargo build --release --example api_latency
[ "${KEEP_DATA:-0}" = 1 ] || trap 'rm -rf "$DATA"' EXIT
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
target/release/examples/api_latency "$DATA" "$@"
