#!/usr/bin/env bash
# Model calls per drift decision, sequential vs fixed, on the demo's own
# checkpoints: the aligned SmolLM2-135M-Instruct as the baseline and the
# drifted one as the candidate (tools/prepare_demo_models.py; trained once
# and cached), the 143 builtin probes, the keyword judge (no judge calls),
# 32 new tokens, the ONNX backend on the CPU.
#
#   benches/sequential_demo.sh [SAFEDRIFT_BIN]
#
# Each mode starts from an empty store, so the baseline is evaluated too:
# in full in the fixed mode, alongside the candidate (only the prompts the
# decision needed) in the sequential mode. Prints, per mode, the prompts
# asked of the candidate and of the baseline and the decision, and the
# ratio sequential/fixed of all model calls (candidate + baseline).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/safedrift}
[[ -x $bin ]] || { echo "no $bin: cargo build --release --bin safedrift" >&2; exit 2; }
{ read -r aligned; read -r drifted; } < <(python3 tools/prepare_demo_models.py)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
asked() { # MODE -> "asked planned baseline-asked decision stopped"
    cat > "$tmp/$1.toml" <<TOML
data_dir = "$tmp/data-$1"
[eval]
max_new_tokens = 32
temperature = 0.0
[drift]
mode = "$1"
TOML
    "$bin" eval --config "$tmp/$1.toml" --model "onnx:$drifted" --baseline "onnx:$aligned" \
        --benchmark builtin:probes --judge keyword --output json 2>/dev/null |
        python3 -c '
import json, sys
r = json.load(sys.stdin)
d = r["drift"]
s = d.get("sequential") or {}
asked = lambda m: m["n"] + m["n_benign"]
n = asked(r["metrics"])
print(s.get("asked", n), s.get("planned", n), asked(r["baseline"]["metrics"]),
      "drift" if d["detected"] else "no-drift", s.get("stopped") or "-")'
}
read -r f_asked f_planned f_base f_decision _ < <(asked fixed)
read -r s_asked s_planned s_base s_decision s_stopped < <(asked sequential)
echo "fixed:      $f_asked of $f_planned prompts asked of the candidate, $f_base of the baseline, $f_decision"
echo "sequential: $s_asked of $s_planned prompts asked of the candidate, $s_base of the baseline, $s_decision (stopped: $s_stopped)"
python3 -c "print(f'sequential/fixed model calls: {($s_asked + $s_base) / ($f_asked + $f_base):.2f}x (target at most 0.25x)')"
