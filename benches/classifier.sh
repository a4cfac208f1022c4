#!/usr/bin/env bash
# Throughput of the classifier judge: answers judged per second at batch 32 on
# 2 cores, safedrift (Rust, ort) against a Python reference (onnxruntime +
# tokenizers + numpy, tools/classifier_reference.py) on the same judge files
# and the same inputs, in the same run. Target: ratio >= 1.0.
#
# The inputs are the (prompt, response) pairs of the built-in seed set,
# repeated to ANSWERS answers. Both engines judge them in file order, BATCH
# answers per step, each step encoding its responses and distinct prompts.
# safedrift splits a step's texts, sorted by token count, into the runtime
# calls that pad least (its length groups); the reference makes one call per
# step padded to the longest text, and so does safedrift's second run
# (--one-call-per-batch), which shows what the grouping is worth;
# the session load is excluded; passes alternate between the engines, and
# each engine's fastest of RUNS passes counts.
# Both are pinned to the same CPUs with taskset when it is available.
#
# Usage: benches/classifier.sh
# Environment:
#   JUDGE_DIR   a distilled judge (default: distilled here from builtin:seed)
#   ANSWERS     default 640     BATCH   default 32
#   THREADS     default 2       RUNS    default 3
#   SAFEDRIFT_MODEL_CACHE  where the converted MiniLM is (default ~/.cache/safedrift/models)
#   BENCH_BIN, SAFEDRIFT_BIN  prebuilt bench and safedrift binaries (skip the cargo build)
# Needs: python3 with tests/requirements.txt; cargo (builds the release bench).
# The ratio is printed with PASS/UNDER against the target; it never fails the script.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ANSWERS="${ANSWERS:-640}"
BATCH="${BATCH:-32}"
THREADS="${THREADS:-2}"
RUNS="${RUNS:-3}"
TARGET=1.0
cache="${SAFEDRIFT_MODEL_CACHE:-$HOME/.cache/safedrift/models}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cd "$root"
if [[ -n "${BENCH_BIN:-}" && -n "${SAFEDRIFT_BIN:-}" ]]; then
    bench_bin="$BENCH_BIN"
else
    echo "building the release bench and binary..." >&2
    cargo build --release --quiet --bin safedrift
    cargo bench --no-run --quiet --bench classifier
    bench_bin="$(ls -t target/release/deps/classifier-* | grep -v '\.d$' | head -n1)"
    SAFEDRIFT_BIN=target/release/safedrift
fi

python3 tools/fetch_minilm.py --cache-dir "$cache" >/dev/null
if [[ -z "${JUDGE_DIR:-}" ]]; then
    JUDGE_DIR="$work/judge"
    SAFEDRIFT_MODEL_CACHE="$cache" "$SAFEDRIFT_BIN" distill --data builtin:seed --out "$JUDGE_DIR" \
        --min-accuracy 0 --min-kappa 0 >/dev/null
fi

python3 - "$ANSWERS" >"$work/input.json" <<'EOF'
import json, sys
n = int(sys.argv[1])
rows = [json.loads(l) for l in open("src/builtin/judge_seed.jsonl", encoding="utf-8") if l.strip()]
pairs = [[r["prompt"], r["response"]] for r in rows]
print(json.dumps({"pairs": [pairs[i % len(pairs)] for i in range(n)]}))
EOF

pin=()
if command -v taskset >/dev/null; then
    pin=(taskset -c "0-$((THREADS - 1))")
fi
# Passes alternate between the engines (rust, python, rust, python, ...) so
# that a change in the machine's load does not favour the one that runs later.
best() {
    python3 -c 'import json,sys; a=[json.loads(x) for x in sys.argv[1:] if x]; print(json.dumps(max(a, key=lambda d: d["answers_per_s"])))' "$@"
}
rust="" one="" py=""
for ((i = 1; i <= RUNS; i++)); do
    r="$("${pin[@]}" "$bench_bin" "$JUDGE_DIR" "$work/input.json" --batch "$BATCH" --threads "$THREADS")"
    o="$("${pin[@]}" "$bench_bin" "$JUDGE_DIR" "$work/input.json" --batch "$BATCH" --threads "$THREADS" --one-call-per-batch)"
    p="$("${pin[@]}" python3 tools/classifier_reference.py bench "$JUDGE_DIR" "$work/input.json" --batch "$BATCH" --threads "$THREADS")"
    echo "pass $i: rust $r" >&2
    echo "pass $i: rust, one call per batch $o" >&2
    echo "pass $i: python $p" >&2
    rust="$(best "$rust" "$r")" one="$(best "$one" "$o")" py="$(best "$py" "$p")"
done
echo "rust:   $rust"
echo "rust, one call per batch: $one"
echo "python: $py"
python3 - "$rust" "$one" "$py" "$TARGET" <<'EOF'
import json, sys
r, o, p = (json.loads(a) for a in sys.argv[1:4])
target = float(sys.argv[4])
ratio = r["answers_per_s"] / p["answers_per_s"]
verdict = "PASS" if ratio >= target else "UNDER"
print(f"answers/s at batch {r['batch']}, {r['threads']} threads, {r['answers']} answers: "
      f"safedrift {r['answers_per_s']:.1f}, python reference {p['answers_per_s']:.1f}; "
      f"ratio {ratio:.2f}x (target >= {target}x) {verdict}")
print(f"without length groups (one runtime call per batch, as the reference): "
      f"safedrift {o['answers_per_s']:.1f}; ratio {o['answers_per_s'] / p['answers_per_s']:.2f}x")
EOF
echo "load: $(uptime | sed 's/.*load average//')" >&2
