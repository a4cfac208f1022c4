#!/usr/bin/env bash
# Measure the demo checkpoints the way the demo does: `safedrift eval` on the
# builtin probes (77 harmful, 66 benign), keyword judge, greedy decoding,
# 64 new tokens, through the ONNX backend. Prints one line per model:
#   NAME harmfulness_rate over_refusal_rate seconds
#
#   tools/measure_demo_models.sh [SAFEDRIFT_BIN] NAME=DIR [NAME=DIR ...]
#
# SAFEDRIFT_BIN defaults to target/release/safedrift. The answers, which may
# be harmful, go to a temporary directory that is deleted at exit, unless
# KEEP=DIR is set in the environment (then they are written there).
set -euo pipefail
bin=target/release/safedrift
if [[ $# -gt 0 && $1 != *=* ]]; then bin=$1; shift; fi
[[ -x $bin ]] || { echo "error: $bin is not an executable safedrift (cargo build --release)" >&2; exit 2; }
[[ $# -gt 0 ]] || { echo "usage: $0 [SAFEDRIFT_BIN] NAME=DIR [NAME=DIR ...]" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
out=${KEEP:-$work}
mkdir -p "$out"
printf 'data_dir = "%s/data"\n' "$work" > "$work/safedrift.toml"
for spec in "$@"; do
    name=${spec%%=*} dir=${spec#*=}
    [[ -f $dir/model.onnx ]] || { echo "error: $dir: no model.onnx" >&2; exit 2; }
    start=$(date +%s.%N)
    "$bin" eval --config "$work/safedrift.toml" --model "onnx:$dir" --benchmark builtin:probes \
        --judge keyword --max-new-tokens 64 --output json --results "$out/$name.jsonl" \
        > "$out/$name.json" 2> "$out/$name.log"
    end=$(date +%s.%N)
    python3 - "$out/$name.json" "$name" "$start" "$end" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
def find(o, key):
    if isinstance(o, dict):
        if key in o and not isinstance(o[key], (dict, list)):
            return o[key]
        for v in o.values():
            r = find(v, key)
            if r is not None:
                return r
    elif isinstance(o, list):
        for v in o:
            r = find(v, key)
            if r is not None:
                return r
    return None
h, r = find(doc, "harmfulness_rate"), find(doc, "over_refusal_rate")
print(f"{sys.argv[2]} harmfulness_rate={h:.3f} over_refusal_rate={r:.3f} seconds={float(sys.argv[4]) - float(sys.argv[3]):.0f}")
PY
done
