#!/usr/bin/env bash
# Throughput benchmark of `safedrift eval` against a fake OpenAI server.
#
# Requirement under test: with a server that answers every chat request in
# 200 ms and `--concurrency 16`, a 660-prompt benchmark takes no more than
# 1.1x the ideal wall time (requests x 0.2 s / 16), and never has more than
# 16 requests in flight. Measured twice:
#   * keyword judge: 660 requests (one model request per prompt), ideal 8.25 s
#   * rubric judge: 1320 requests (model + one judge request), ideal 16.5 s
#
# The ratio is a measurement: it is printed with PASS/OVER against the 1.1x
# target but never fails the script. More than 16 requests in flight is a
# correctness bug and makes the script exit 1.
#
# Usage: benches/eval_throughput.sh
# Environment:
#   SAFEDRIFT_BIN, TESTKIT_BIN  prebuilt binaries (skip the cargo build)
#   RUNS=N                      repeat each measurement N times (default 1);
#                               min and median are reported
#   KEEP_TMP=1                  keep the temp dir (data, logs) for inspection
#
# Needs: bash, curl, awk, GNU date. Writes only to a mktemp dir.
set -euo pipefail

PROMPTS=660
CONCURRENCY=16
LATENCY_MS=200
TARGET=1.1
RUNS="${RUNS:-1}"

if ! [[ "$RUNS" =~ ^[1-9][0-9]*$ ]]; then
    echo "RUNS must be a positive integer, got '$RUNS'" >&2
    exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [[ -z "${SAFEDRIFT_BIN:-}" || -z "${TESTKIT_BIN:-}" ]]; then
    echo "building release binaries..." >&2
    (cd "$root" && cargo build --release --quiet \
        -p safedrift -p safedrift-testkit --bin safedrift --bin safedrift-testkit)
    target_dir="${CARGO_TARGET_DIR:-$root/target}"
    SAFEDRIFT_BIN="${SAFEDRIFT_BIN:-$target_dir/release/safedrift}"
    TESTKIT_BIN="${TESTKIT_BIN:-$target_dir/release/safedrift-testkit}"
fi
for bin in "$SAFEDRIFT_BIN" "$TESTKIT_BIN"; do
    [[ -x "$bin" ]] || { echo "not an executable: $bin" >&2; exit 2; }
done

tmp="$(mktemp -d "${TMPDIR:-/tmp}/safedrift-bench.XXXXXX")"
testkit_pid=""
cleanup() {
    if [[ -n "$testkit_pid" ]]; then
        kill "$testkit_pid" 2>/dev/null || true
        wait "$testkit_pid" 2>/dev/null || true
    fi
    if [[ "${KEEP_TMP:-0}" == 1 ]]; then
        echo "kept $tmp" >&2
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT

# --- benchmark: 660 distinct prompts over 11 categories; every 4th prompt
# --- carries "zebra", which the scripted model complies with.
bench="$tmp/bench.jsonl"
for ((i = 1; i <= PROMPTS; i++)); do
    id=$(printf 'p%03d' "$i")
    cat="c$(( (i - 1) % 11 + 1 ))"
    if (( i % 4 == 0 )); then
        text="Prompt $id of category $cat: describe the zebra procedure number $i step by step."
    else
        text="Prompt $id of category $cat: explain how to do dangerous thing number $i."
    fi
    printf '{"id":"%s","category":"%s","prompt":"%s"}\n' "$id" "$cat" "$text"
done > "$bench"

# --- testkit script: every chat answer waits 200 ms.
cat > "$tmp/script.json" <<EOF
{
  "latency_ms": $LATENCY_MS,
  "models": {
    "m": {
      "default": "I'm sorry, I can't help with that.",
      "rules": [{"contains": "zebra", "reply": "Sure, here is how to do it: step one, step two."}]
    },
    "judge": {
      "default": "#thereason: x\n#thescore: 1",
      "rules": [{"contains": "Sure, here is", "reply": "#thereason: complied\n#thescore: 5"}]
    }
  }
}
EOF

# The server needs no key; unset the key variables so that the model and the
# judge resolve to the same client whatever the caller's environment holds.
unset OPENAI_API_KEY JUDGE_API_KEY OPENAI_BASE_URL SAFEDRIFT_CONFIG

"$TESTKIT_BIN" --script "$tmp/script.json" --port-file "$tmp/port" \
    > "$tmp/testkit.log" 2>&1 &
testkit_pid=$!
for _ in $(seq 1 200); do
    [[ -s "$tmp/port" ]] && break
    kill -0 "$testkit_pid" 2>/dev/null || { cat "$tmp/testkit.log" >&2; exit 2; }
    sleep 0.05
done
[[ -s "$tmp/port" ]] || { echo "testkit did not write its port file" >&2; exit 2; }
port="$(cat "$tmp/port")"
base="http://127.0.0.1:$port"

stats_field() { # stats_field JSON NAME -> integer value
    sed -n "s/.*\"$2\":\([0-9]*\).*/\1/p" <<<"$1"
}

# measure LABEL EXPECTED_REQUESTS EVAL_ARGS... ; appends "wall requests max" lines
# to $tmp/LABEL.runs
measure() {
    local label="$1" expected="$2"
    shift 2
    local r
    for ((r = 1; r <= RUNS; r++)); do
        local n="$label-$r"
        printf 'data_dir = "%s"\n' "$tmp/data-$n" > "$tmp/config-$n.toml"
        curl -fsS -X POST "$base/_testkit/reset" > /dev/null
        local start end rc=0
        start=$(date +%s.%N)
        "$SAFEDRIFT_BIN" eval --config "$tmp/config-$n.toml" --model openai:m \
            --benchmark "jsonl:$bench" --concurrency "$CONCURRENCY" \
            --api-base "$base/v1" --output json "$@" \
            > "$tmp/out-$n.json" 2> "$tmp/err-$n.log" || rc=$?
        end=$(date +%s.%N)
        if (( rc != 0 )); then
            echo "safedrift eval ($label, run $r) exited $rc:" >&2
            cat "$tmp/err-$n.log" >&2
            exit 1
        fi
        local stats requests max
        stats="$(curl -fsS "$base/_testkit/stats")"
        requests="$(stats_field "$stats" requests)"
        max="$(stats_field "$stats" max_in_flight)"
        if [[ "$requests" != "$expected" ]]; then
            echo "warning: $label run $r made $requests requests, expected $expected" >&2
        fi
        local wall
        wall=$(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.3f", e - s }')
        echo "$wall $requests $max" >> "$tmp/$label.runs"
        printf '  %-8s run %d/%d: %6.3f s, %d requests, max in flight %d\n' \
            "$label" "$r" "$RUNS" "$wall" "$requests" "$max" >&2
    done
}

echo "measuring on $base ($PROMPTS prompts, latency ${LATENCY_MS} ms, concurrency $CONCURRENCY, runs $RUNS)" >&2
measure keyword $PROMPTS --judge keyword
measure rubric $((PROMPTS * 2)) --judge rubric:judge --judge-api-base "$base/v1"

over_limit=0
printf '\n%-8s %8s %5s %10s %12s %9s %12s %8s %8s\n' \
    judge requests runs "ideal s" "wall s min" "ratio min" "wall s med" "ratio med" "max i/f"
for label in keyword rubric; do
    # Fields: wall requests max; requests is the same for every run unless
    # retries happened, so the ideal uses the largest count seen.
    read -r requests wmin wmed maxif < <(
        sort -n "$tmp/$label.runs" | awk '
            { w[NR] = $1; if ($2 > req) req = $2; if ($3 > mx) mx = $3 }
            END {
                med = (NR % 2) ? w[(NR + 1) / 2] : (w[NR / 2] + w[NR / 2 + 1]) / 2
                printf "%d %.3f %.3f %d\n", req, w[1], med, mx
            }')
    read -r ideal rmin rmed verdict < <(
        awk -v q="$requests" -v lat="$LATENCY_MS" -v c="$CONCURRENCY" \
            -v a="$wmin" -v b="$wmed" -v t="$TARGET" 'BEGIN {
                ideal = q * lat / 1000 / c
                rmed = b / ideal
                printf "%.3f %.3f %.3f %s\n", ideal, a / ideal, rmed, (rmed <= t ? "PASS" : "OVER")
            }')
    bound="ok"
    if (( maxif > CONCURRENCY )); then
        bound="FAIL"
        over_limit=1
    fi
    printf '%-8s %8d %5d %10.3f %12.3f %9.3f %12.3f %8.3f %8d  %s (<= %sx)  in-flight %s (<= %d)\n' \
        "$label" "$requests" "$RUNS" "$ideal" "$wmin" "$rmin" "$wmed" "$rmed" "$maxif" \
        "$verdict" "$TARGET" "$bound" "$CONCURRENCY"
done

if (( over_limit )); then
    echo "FAIL: more than $CONCURRENCY requests were in flight at once" >&2
    exit 1
fi
