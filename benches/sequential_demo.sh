#!/usr/bin/env bash
# Model calls per drift decision, sequential vs fixed, on the demo's own
# checkpoints: the aligned SmolLM2-135M-Instruct as the baseline and the
# drifted one as the candidate (tools/prepare_demo_models.py; trained once
# and cached), the 143 builtin probes, the keyword judge (no judge calls),
# 32 new tokens, the ONNX backend on the CPU.
#
#   benches/sequential_demo.sh [SAFEDRIFT_BIN]
#
# Prints, per mode, the candidate's prompts asked and the decision, and the
# ratio sequential/fixed of the candidate's model calls. The baseline is
# asked in full in both modes (once per lineage), so it is not counted.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/safedrift}
[[ -x $bin ]] || { echo "no $bin: cargo build --release --bin safedrift" >&2; exit 2; }
{ read -r aligned; read -r drifted; } < <(python3 tools/prepare_demo_models.py)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
asked() { # MODE -> "asked planned decision"
    cat > "$tmp/$1.toml" <<TOML
data_dir = "$tmp/data"
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
n = r["metrics"]["n"] + r["metrics"]["n_benign"]
print(s.get("asked", n), s.get("planned", n), "drift" if d["detected"] else "no-drift", s.get("stopped") or "-")'
}
read -r f_asked f_planned f_decision _ < <(asked fixed)
read -r s_asked s_planned s_decision s_stopped < <(asked sequential)
echo "fixed:      $f_asked of $f_planned prompts asked, $f_decision"
echo "sequential: $s_asked of $s_planned prompts asked, $s_decision (stopped: $s_stopped)"
python3 -c "print(f'sequential/fixed model calls: {$s_asked / $f_asked:.2f}x (target at most 0.25x)')"
