#!/usr/bin/env bash
# Decoding speed of safedrift's ONNX backend against onnxruntime-genai and a
# plain Python onnxruntime loop, on the same ONNX file, same prompts, greedy.
#
#   batch 1  B1_PROMPTS prompts (default 4) decoded one at a time, exactly
#            128 new tokens each (end token ignored in all three engines)
#   batch 8  8 prompts of mixed length in one batch, exactly 128 new tokens
#   whole    the builtin probes (143 prompts of mixed length, ChatML as
#            `safedrift eval` renders them), up to 128 new tokens, stopping
#            at the end token, end to end (process start to exit):
#              safedrift: `safedrift eval --model onnx:DIR --benchmark
#                jsonl:src/builtin/probes.jsonl --judge keyword
#                --max-new-tokens 128 --output json` (its own sorting,
#                batching and dropping of finished rows)
#              genai: fixed batches in file order, once for each size in
#                GENAI_BATCHES (default "8 16": 16 is safedrift's max_batch)
#              python-ort: fixed batches of PY_BATCH (default 8) in file
#                order, no sorting, no compaction
#
# Prints tokens/s, prompts/s, the ratio to genai, the peak RSS of each
# process (/usr/bin/time -v) and whether the greedy tokens were identical.
# Ratios are measurements; the script does not fail on them. Different
# greedy tokens between engines make it exit 1.
#
# Usage: benches/onnx_decode.sh
# Environment:
#   MODEL=DIR        model directory (default: SmolLM2-135M-Instruct fp32,
#                    made by tools/fetch_smollm2.py under
#                    $SAFEDRIFT_MODEL_CACHE, default ~/.cache/safedrift/models)
#   VENV=DIR         Python venv with benches/requirements.txt (created if
#                    missing; default target/onnx-bench-venv)
#   THREADS=N        intra-op threads of every engine (default: nproc)
#   ONLY="b1 b8 whole"  which tests to run
#   GENAI_BATCHES, PY_BATCH, B1_PROMPTS  see above
#   SAFEDRIFT_MAX_BATCH=N  the backend's max_batch in the whole run (default:
#                    unset, the backend's default of 16)
#   BENCH=FILE.jsonl another benchmark for the whole run, e.g.
#                    benches/data/mixed_lengths.jsonl (120 prompts whose
#                    prompt and answer lengths spread widely; made by
#                    benches/mixed_lengths.py)
#   MAX_NEW=N        another answer length (for a quick check of the
#                    script; the targets are about 128)
#   RUNS=N           repeat every measurement N times, the engines taking
#                    turns (default 1); the report gives the best run and
#                    the median of each
#   SKIP_BUILD=1     use the release binaries already in target/
#   KEEP_TMP=1       keep the work dir (outputs, logs)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
THREADS="${THREADS:-$(nproc)}"
ONLY="${ONLY:-b1 b8 whole}"
GENAI_BATCHES="${GENAI_BATCHES:-8 16}"
PY_BATCH="${PY_BATCH:-8}"
B1_PROMPTS="${B1_PROMPTS:-4}"
RUNS="${RUNS:-1}"
if ! [[ "$RUNS" =~ ^[1-9][0-9]*$ ]]; then
    echo "RUNS must be a positive integer, got '$RUNS'" >&2
    exit 2
fi
MAX_NEW="${MAX_NEW:-128}"
VENV="${VENV:-$root/target/onnx-bench-venv}"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
safedrift="$target_dir/release/safedrift"
example="$target_dir/release/examples/onnx_decode"

if [[ ! -x /usr/bin/time ]]; then
    echo "/usr/bin/time is missing (it measures peak RSS): install Debian's 'time' package (apt-get install time)" >&2
    exit 2
fi

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    echo "building release binaries..." >&2
    cargo build --release --quiet --bin safedrift --example onnx_decode
fi
for bin in "$safedrift" "$example"; do
    [[ -x "$bin" ]] || { echo "not an executable: $bin" >&2; exit 2; }
done

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "creating $VENV..." >&2
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r benches/requirements.txt
py="$VENV/bin/python"
# Every engine loads the same ONNX Runtime library: the venv's wheel.
ORT_DYLIB_PATH="$(ls "$("$py" -c 'import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))')"/capi/libonnxruntime.so.* | head -n1)"
export ORT_DYLIB_PATH

if [[ -z "${MODEL:-}" ]]; then
    MODEL="$("$py" tools/fetch_smollm2.py --cache-dir "${SAFEDRIFT_MODEL_CACHE:-$HOME/.cache/safedrift/models}" | tail -n1)"
fi
MODEL="$(cd "$MODEL" && pwd)"

work="$(mktemp -d "${TMPDIR:-/tmp}/safedrift-onnx-bench.XXXXXX")"
cleanup() {
    if [[ "${KEEP_TMP:-0}" == 1 ]]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

# A directory for genai: the model's files (symlinked) plus a hand-written
# genai_config.json. `noeos` names the last vocabulary id (a rare merge) as
# the end token instead of the real one, so that genai decodes exactly
# max_length tokens, as --ignore-eos does elsewhere (genai refuses an id
# outside the vocabulary). Had any engine generated that id, the outputs
# would differ and the token check below would say so.
write_genai_dir() { # DIR EOS_MODE
    mkdir -p "$1"
    for f in "$MODEL"/*; do ln -s "$f" "$1/$(basename "$f")"; done
    "$py" - "$MODEL" "$1/genai_config.json" "$THREADS" "$2" <<'EOF'
import json, sys
from pathlib import Path
model, out, threads, mode = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
c = json.loads((model / "config.json").read_text())
g = json.loads((model / "generation_config.json").read_text())
eos = g.get("eos_token_id", c.get("eos_token_id"))
vocab = c["vocab_size"]
heads = c["num_attention_heads"]
config = {
    "model": {
        "type": "llama",
        "bos_token_id": g.get("bos_token_id", c.get("bos_token_id")),
        "eos_token_id": [vocab - 1] if mode == "noeos" else (eos if isinstance(eos, list) else [eos]),
        # genai finds left padding by this id, so it must be one no prompt holds:
        # <|endoftext|> (0) never appears in a ChatML prompt.
        "pad_token_id": 0,
        "vocab_size": vocab,
        "context_length": c.get("max_position_embeddings", 2048),
        "decoder": {
            "filename": "model.onnx",
            "session_options": {"log_id": "onnxruntime-genai", "provider_options": [],
                                "intra_op_num_threads": threads},
            "head_size": c.get("head_dim", c["hidden_size"] // heads),
            "hidden_size": c["hidden_size"],
            "num_attention_heads": heads,
            "num_key_value_heads": c.get("num_key_value_heads", heads),
            "num_hidden_layers": c["num_hidden_layers"],
            "inputs": {
                "input_ids": "input_ids",
                "attention_mask": "attention_mask",
                "position_ids": "position_ids",
                "past_key_names": "past_key_values.%d.key",
                "past_value_names": "past_key_values.%d.value",
            },
            "outputs": {
                "logits": "logits",
                "present_key_names": "present.%d.key",
                "present_value_names": "present.%d.value",
            },
        },
    },
    "search": {
        "do_sample": False, "num_beams": 1, "num_return_sequences": 1, "top_k": 1, "top_p": 1.0,
        "temperature": 1.0, "repetition_penalty": 1.0, "min_length": 0,
        "max_length": c.get("max_position_embeddings", 2048),
        "past_present_share_buffer": False,
    },
}
out.write_text(json.dumps(config, indent=2))
EOF
}
write_genai_dir "$work/genai-eos" eos
write_genai_dir "$work/genai-noeos" noeos

# The prompts: the builtin probes as `safedrift eval` renders and tokenizes them.
bench="${BENCH:-$root/src/builtin/probes.jsonl}"
"$example" tokenize "$MODEL" "$bench" >"$work/whole.tok.json"
"$py" - "$work" "$MAX_NEW" "$B1_PROMPTS" <<'EOF'
import json, sys
from pathlib import Path
work, max_new, b1 = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
tok = json.loads((work / "whole.tok.json").read_text())
prompts = tok["prompts"]
(work / "whole.prompts.json").write_text(json.dumps({"ids": tok["ids"], "prompts": prompts, "max_new_tokens": max_new}))
# 8 fixed prompts spread over the file (mixed lengths, mixed categories).
step = len(prompts) // 8
fixed = [prompts[i * step] for i in range(8)]
(work / "b8.prompts.json").write_text(json.dumps({"prompts": fixed, "max_new_tokens": max_new}))
(work / "b1.prompts.json").write_text(json.dumps({"prompts": fixed[:b1], "max_new_tokens": max_new}))
lengths = sorted(len(p) for p in prompts)
print(f"prompts: whole {len(prompts)} (tokens {lengths[0]}..{lengths[-1]}, median {lengths[len(lengths)//2]}), "
      f"batch 8 lengths {[len(p) for p in fixed]}", file=sys.stderr)
EOF

timed() { # NAME CMD...: runs CMD under /usr/bin/time -v, stdout to NAME.json
    local name="$1"
    shift
    echo "  $name..." >&2
    /usr/bin/time -v -o "$work/$name.time" "$@" >"$work/$name.json" 2>"$work/$name.log" || {
        echo "$name failed:" >&2
        tail -n 20 "$work/$name.log" >&2
        exit 1
    }
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load:$(uptime | sed 's/.*load average//')" >&2
echo "model: $MODEL; threads: $THREADS; ORT: $ORT_DYLIB_PATH" >&2
cat >"$work/safedrift.toml" <<EOF
data_dir = "$work/data"

# The repetition guard is off: the other engines have none.
[backends.local]
kind = "onnx"
threads = $THREADS
repetition_window = 0
${SAFEDRIFT_MAX_BATCH:+max_batch = $SAFEDRIFT_MAX_BATCH}
EOF

run_engine() { # TEST ENGINE RUN
    local test="$1" engine="$2" run="$3" batch=1
    [[ "$test" == b8 ]] && batch=8
    case "$test.$engine" in
        b?.safedrift) timed "$test.$engine.$run" "$example" decode "$MODEL" "$work/$test.prompts.json" \
            --batch "$batch" --ignore-eos --threads "$THREADS" ;;
        b?.genai) timed "$test.$engine.$run" "$py" benches/onnx_decode.py genai "$work/genai-noeos" \
            "$work/$test.prompts.json" --batch "$batch" ;;
        b?.python-ort) timed "$test.$engine.$run" "$py" benches/onnx_decode.py ortloop "$MODEL" \
            "$work/$test.prompts.json" --batch "$batch" --ignore-eos --threads "$THREADS" ;;
        whole.safedrift)
            rm -rf "$work/data"
            timed "whole.$engine.$run" "$safedrift" eval --config "$work/safedrift.toml" --model "onnx:$MODEL" \
                --benchmark "jsonl:$bench" --judge keyword --max-new-tokens "$MAX_NEW" --output json \
                --results "$work/whole.safedrift.$run.results.jsonl" ;;
        whole.genai-b*) timed "whole.$engine.$run" "$py" benches/onnx_decode.py genai "$work/genai-eos" \
            "$work/whole.prompts.json" --batch "${engine#genai-b}" ;;
        whole.python-ort) timed "whole.$engine.$run" "$py" benches/onnx_decode.py ortloop "$MODEL" \
            "$work/whole.prompts.json" --batch "$PY_BATCH" --threads "$THREADS" ;;
    esac
}

for run in $(seq 1 "$RUNS"); do
    # The engines take turns, starting with a different one each run, so
    # that a burst of load elsewhere on the machine does not hit only one.
    case $(((run - 1) % 3)) in
        0) order="safedrift genai python-ort" ;;
        1) order="genai python-ort safedrift" ;;
        *) order="python-ort safedrift genai" ;;
    esac
    for test in b1 b8 whole; do
        [[ " $ONLY " == *" $test "* ]] || continue
        case $test in
            b1) echo "batch 1, exactly $MAX_NEW new tokens, run $run/$RUNS:" >&2 ;;
            b8) echo "batch 8, exactly $MAX_NEW new tokens, run $run/$RUNS:" >&2 ;;
            whole) echo "whole benchmark, up to $MAX_NEW new tokens, run $run/$RUNS:" >&2 ;;
        esac
        engines="$order"
        if [[ "$test" == whole ]]; then
            genai_engines=""
            for b in $GENAI_BATCHES; do genai_engines+=" genai-b$b"; done
            engines="${order/genai/$genai_engines}"
        fi
        for engine in $engines; do
            run_engine "$test" "$engine" "$run"
        done
        if [[ "$test" == whole ]]; then
            for engine in $genai_engines python-ort; do
                "$example" detok "$MODEL" "$work/whole.$engine.$run.json" >"$work/whole.$engine.$run.texts.json"
            done
        fi
    done
done

echo >&2
echo "engines: safedrift (examples/onnx_decode.rs; whole: safedrift eval), onnxruntime-genai $("$py" -c 'import onnxruntime_genai as g; print(g.__version__)'), python onnxruntime loop (tools/reference_decode.py); whole: genai batches of $GENAI_BATCHES, python batch $PY_BATCH; load now:$(uptime | sed 's/.*load average//')" >&2
"$py" benches/onnx_decode.py report "$work" "$RUNS"
