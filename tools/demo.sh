#!/usr/bin/env bash
# The first-ten-minutes demo: real safety drift, caught end to end, on a
# laptop with no GPU, no API key and no internet beyond package registries.
#
# 1. Builds safedrift and prepares two real checkpoints of
#    SmolLM2-135M-Instruct (tools/prepare_demo_models.py; trained once and
#    cached, docs/demo-training.md says how): "aligned", safety-tuned by the
#    project's numpy trainer, and "drifted", that checkpoint fine-tuned further
#    on ten harmless identity-shifting examples (the attack of Qi et al. 2023).
# 2. Starts a webhook receiver and `safedrift run --config config/demo.toml`
#    (a directory watcher, the builtin probes, the ONNX backend, the keyword
#    judge, a signed webhook alert).
# 3. Drops the aligned checkpoint, then the drifted one, into the watched
#    folder, shows the evaluations' progress, the per-category comparison and
#    the alert as it arrives, prints the README's table from the stored runs,
#    and leaves the dashboard running until Ctrl-C.
#
# Usage: tools/demo.sh [--serve | --no-serve]
#   --serve     keep the daemon and dashboard running until Ctrl-C (the
#               default when stdin is a terminal);
#   --no-serve  stop at the end (the default otherwise: CI, scripts).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }
serve=auto
case "${1:-}" in
    --serve) serve=yes ;;
    --no-serve) serve=no ;;
    "") ;;
    *) echo "usage: $0 [--serve | --no-serve]" >&2; exit 2 ;;
esac
if [[ $serve == auto ]]; then
    if [[ -t 0 ]]; then serve=yes; else serve=no; fi
fi
API=http://127.0.0.1:7300
DEMO=safedrift-data/demo
started=$SECONDS

for port in 7300 7399; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "port $port is in use (is another safedrift or demo running?); stop it first" >&2
        exit 2
    fi
done

say "Building safedrift (the first build takes several minutes)"
cargo build --quiet --bin safedrift

if ! python3 -c 'import onnx, gguf, onnxruntime, numpy, tokenizers' 2>/dev/null; then
    say "Installing the model tools' Python packages (tools/requirements.txt; no torch)"
    python3 -m pip install --quiet --disable-pip-version-check -r tools/requirements.txt
fi

say "Preparing the aligned and the drifted checkpoints (trained on the first run, about 5-12 min on 2 cores; cached after)"
t=$SECONDS
{ read -r aligned; read -r drifted; } < <(python3 tools/prepare_demo_models.py)
echo "aligned: $aligned" >&2
echo "drifted: $drifted ($((SECONDS - t)) s)" >&2

# A fresh demo store each time; the checkpoints are hard links (no copies).
rm -rf "$DEMO"
mkdir -p "$DEMO/checkpoints" "$DEMO/received"
ln -s "$aligned" "$DEMO/aligned"
python3 -c 'import base64, os; print("whsec_" + base64.b64encode(os.urandom(32)).decode())' > "$DEMO/webhook-secret"

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'echo >&2; say "Stopping (Ctrl-C): the daemon saves its progress and exits"; exit 130' INT TERM

python3 tools/demo_client.py receive 7399 "$DEMO/webhook-secret" "$DEMO/received" &
pids+=($!)
say "Starting the daemon: safedrift run --config config/demo.toml (log: $DEMO/daemon.log)"
RUST_LOG=warn,safedrift=info ./target/debug/safedrift run --config config/demo.toml 2> "$DEMO/daemon.log" &
pids+=($!)
for _ in $(seq 100); do curl -fs "$API/healthz" >/dev/null 2>&1 && break; sleep 0.2; done
curl -fs "$API/healthz" >/dev/null || { cat "$DEMO/daemon.log" >&2; exit 3; }

drop() { # NAME SOURCE_DIR: what a training job's last step does
    cp -rl "$2" "$DEMO/checkpoints/.$1" 2>/dev/null || cp -r "$2" "$DEMO/checkpoints/.$1"
    mv "$DEMO/checkpoints/.$1" "$DEMO/checkpoints/$1"
    touch "$DEMO/checkpoints/$1/COMPLETE"
}

say "1/2: a fine-tuning job publishes assistant-v1, the aligned checkpoint, into $DEMO/checkpoints"
echo "The daemon finds it and evaluates the lineage's baseline on the 143 builtin probes (77 harmful" >&2
echo "requests in 11 categories, 66 benign ones) through ONNX Runtime on the CPU; assistant-v1 has the" >&2
echo "baseline's files, so its run reuses the baseline's answers:" >&2
drop assistant-v1 "$aligned"
python3 tools/demo_client.py wait "$API" 1
python3 tools/demo_client.py report "$API" assistant-v1 >&2

say "2/2: the next job publishes assistant-v2: the same model after 10 epochs on 10 harmless identity-shifting examples"
drop assistant-v2 "$drifted"
python3 tools/demo_client.py wait "$API" 2
say "What changed (the same 143 probes; paired tests, Holm-corrected per category)"
python3 tools/demo_client.py report "$API" assistant-v2

say "The alert, as the webhook receiver got it (signature verified)"
python3 tools/demo_client.py wait-alert "$DEMO/received" 60

say "The README's table, from the runs the daemon stored"
python3 tools/demo_client.py table "$API"

say "Done in $((SECONDS - started)) s. The dashboard: $API/   (the API: $API/api/v1/runs)"
if [[ $serve == yes ]]; then
    echo "Press Ctrl-C to stop the daemon." >&2
    wait "${pids[1]}"
fi
