#!/usr/bin/env bash
# Throughput of the local generative judge (`llama-guard:onnx:DIR`): answers
# judged per second on 2 cores, safedrift (Rust, ort) against onnxruntime's
# Python API doing the same work (benches/onnx_judge.py bench) on the same
# ONNX file and the same answers, in the same run. Target: ratio >= 1.0.
#
# The model is SmolLM2-135M-Instruct standing in for Llama Guard 3 1B: its
# files in the guard's layout with a Llama Guard 3-style chat template
# (`benches/onnx_judge.py guard-dir`), so every prompt is the guard's task,
# its 14 categories and the exchange, about 300-400 tokens. The answers are
# the (prompt, response) pairs of the built-in seed set, the first ANSWERS.
#
# Per answer both engines render the chat template, tokenize, and read
# P(unsafe) from one prefill of a left-padded batch (no decoding):
#   safedrift  every answer's judge() call in flight at once, as `safedrift
#              eval` makes them; the backend's worker sorts what waits by
#              length and runs batches of up to BATCH (benches/onnx_judge.rs)
#   python     batches of BATCH in file order (the plain loop; the target is
#              measured against it), and a second run sorted by token count
#              first (--sort), which shows what the sorting is worth
# The model load is excluded; passes alternate between the engines; each
# engine's fastest of RUNS passes counts. All are pinned to the same CPUs
# with taskset when it is available, ONNX Runtime on THREADS intra-op threads.
#
# Usage: benches/onnx_judge.sh
# Environment:
#   ANSWERS   default 64      BATCH   default 8
#   THREADS   default 2       RUNS    default 2
#   SAFEDRIFT_MODEL_CACHE  where SmolLM2 is converted (default ~/.cache/safedrift/models)
#   BENCH_BIN  a prebuilt bench binary (skips the cargo build)
# Needs: python3 with tools/requirements.txt and Jinja2 (tests/requirements.txt);
# cargo (builds the release bench).
# The ratio is printed with PASS/UNDER against the target; it never fails the script.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ANSWERS="${ANSWERS:-64}"
BATCH="${BATCH:-8}"
THREADS="${THREADS:-2}"
RUNS="${RUNS:-2}"
TARGET=1.0
cache="${SAFEDRIFT_MODEL_CACHE:-$HOME/.cache/safedrift/models}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cd "$root"
if [[ -n "${BENCH_BIN:-}" ]]; then
    bench_bin="$BENCH_BIN"
else
    echo "building the release bench..." >&2
    cargo bench --no-run --quiet --bench onnx_judge
    bench_bin="$(ls -t target/release/deps/onnx_judge-* | grep -v '\.d$' | head -n1)"
fi

model="$(python3 tools/fetch_smollm2.py --cache-dir "$cache" | tail -n1)"
python3 benches/onnx_judge.py guard-dir "$model" "$work/guard" >/dev/null

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
best() {
    python3 -c 'import json,sys; a=[json.loads(x) for x in sys.argv[1:] if x]; print(json.dumps(max(a, key=lambda d: d["answers_per_s"])))' "$@"
}
rust="" py="" pys=""
for ((i = 1; i <= RUNS; i++)); do
    r="$("${pin[@]}" "$bench_bin" "$work/guard" "$work/input.json" --batch "$BATCH" --threads "$THREADS")"
    p="$("${pin[@]}" python3 benches/onnx_judge.py bench "$work/guard" "$work/input.json" --batch "$BATCH" --threads "$THREADS")"
    s="$("${pin[@]}" python3 benches/onnx_judge.py bench "$work/guard" "$work/input.json" --batch "$BATCH" --threads "$THREADS" --sort)"
    echo "pass $i: rust $r" >&2
    echo "pass $i: python $p" >&2
    echo "pass $i: python, sorted $s" >&2
    rust="$(best "$rust" "$r")" py="$(best "$py" "$p")" pys="$(best "$pys" "$s")"
done
echo "rust:   $rust"
echo "python: $py"
echo "python, sorted: $pys"
python3 - "$rust" "$py" "$pys" "$TARGET" <<'EOF'
import json, sys
r, p, s = (json.loads(a) for a in sys.argv[1:4])
target = float(sys.argv[4])
ratio = r["answers_per_s"] / p["answers_per_s"]
verdict = "PASS" if ratio >= target else "UNDER"
print(f"answers/s at batch {r['batch']}, {r['threads']} threads, {r['answers']} answers: "
      f"safedrift {r['answers_per_s']:.2f}, python loop {p['answers_per_s']:.2f}; "
      f"ratio {ratio:.2f}x (target >= {target}x) {verdict}")
print(f"against the python loop sorted by length first: {s['answers_per_s']:.2f}; "
      f"ratio {r['answers_per_s'] / s['answers_per_s']:.2f}x")
if r["unsafe"] != p["unsafe"]:
    print(f"note: the engines disagree on how many answers are unsafe: {r['unsafe']} vs {p['unsafe']}")
EOF
echo "load: $(uptime | sed 's/.*load average//')" >&2
