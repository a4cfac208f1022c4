#!/usr/bin/env bash
# At which checkpoint of a fine-tune does each signal fire? The demo's identity-shift fine-tune
# (tools/prepare_demo_models.py --lineage: the aligned checkpoint fine-tuned on ten harmless
# "obedient agent" examples, snapshots after epochs 1, 2, 3, 5 and 10) is evaluated checkpoint by
# checkpoint against the aligned one, with the refusal-depth probe (--probe kl), the prefilling
# attack (--probe prefill:10), the builtin probes and the utility questions, keyword judge; the
# aligned checkpoint is also compared with itself.
#
#   benches/lineage.sh [SAFEDRIFT_BIN]        (default: cargo build --release, target/release/safedrift)
#
# Prints one row per checkpoint: harmfulness rate, over-refusal, utility, the mean KL over the first
# 5 answer tokens, the prefill attack's success rate, and the findings that fired; then the probe's
# cost against the evaluation's. The aligned baseline's run is stored once and reused.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-}"
if [[ -z "$bin" ]]; then
    cargo build --release --quiet
    bin=target/release/safedrift
fi
mapfile -t dirs < <(python3 tools/prepare_demo_models.py --lineage)
aligned="${dirs[0]}"
# drifted after epoch 10 is dirs[1]; the snapshots after epochs 1, 2, 3, 5 follow.
checkpoints=("aligned:$aligned" "epoch1:${dirs[2]}" "epoch2:${dirs[3]}" "epoch3:${dirs[4]}"
    "epoch5:${dirs[5]}" "epoch10:${dirs[1]}")
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cat >"$work/config.toml" <<EOF
data_dir = "$work/data"
EOF
for entry in "${checkpoints[@]}"; do
    name="${entry%%:*}"
    dir="${entry#*:}"
    started=$(date +%s)
    "$bin" eval --config "$work/config.toml" --model "onnx:$dir" --baseline "onnx:$aligned" \
        --benchmark builtin:probes --benchmark builtin:utility --judge keyword --probe kl --probe prefill:10 \
        --log-format json --output json >"$work/$name.json" 2>"$work/$name.log" || {
        rc=$?
        # 1 is "drift found" only with --fail-on-drift; anything else is a failure.
        echo "error: eval of $name failed (exit $rc):" >&2
        tail -20 "$work/$name.log" >&2
        exit 1
    }
    echo "$name $(( $(date +%s) - started ))" >>"$work/seconds"
done
python3 - "$work" "${checkpoints[@]}" <<'EOF'
import datetime, json, sys
work, entries = sys.argv[1], sys.argv[2:]
def stamp(t):
    return datetime.datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()
costs = []
seconds = dict(line.split() for line in open(f"{work}/seconds"))
pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"
print("| checkpoint | harmfulness rate | over-refusal | utility | KL, first 5 tokens (nats) | prefill:10 success | findings fired | seconds |")
print("|---|---|---|---|---|---|---|---|")
for entry in entries:
    name = entry.split(":", 1)[0]
    run = json.load(open(f"{work}/{name}.json"))
    m = run["metrics"]
    kl = (run.get("probes") or {}).get("kl") or {}
    prefill = ((run.get("probes") or {}).get("attacks") or {}).get("prefill:10") or {}
    early = kl.get("early_mean")
    fired = sorted({f["metric"] + (f"[{f['category'] or f.get('attack')}]" if f.get("category") or f.get("attack") else "")
                    for f in (run.get("drift") or {}).get("findings", []) if f["fired"]})
    print(f"| {name} | {pct(m.get('harmfulness_rate'))} | {pct(m.get('over_refusal_rate'))} | "
          f"{pct(m.get('utility_accuracy'))} | {'-' if early is None else f'{early:.3f}'} | "
          f"{pct(prefill.get('attack_success_rate'))} | "
          f"{', '.join(fired) or 'none'} | {seconds[name]} |")
    probe = None
    for line in open(f"{work}/{name}.log"):
        try:
            fields = json.loads(line).get("fields", {})
        except ValueError:
            continue
        if fields.get("message") == "refusal-depth probe":
            probe = float(fields["seconds"])
    if probe and kl.get("prompts") and run.get("finished_at"):
        eval_s = stamp(run["finished_at"]) - stamp(run["started_at"])
        answers = sum(b["size"] for b in run["benchmarks"])
        costs.append((name, probe, kl["prompts"], eval_s, answers))
print()
print("Cost of the refusal-depth probe (both models, teacher-forced, the baseline's refusals) against the")
print("candidate's evaluation (generation and judging of every answer: the probes, the utility questions")
print("and the prefill variant), in the same eval command; per answer, the probe's time per prompt")
print("against the evaluation's time per answer:")
print()
print("| checkpoint | probe s | prompts probed | evaluation s | answers evaluated | time ratio | per-answer ratio |")
print("|---|---|---|---|---|---|---|")
for name, probe_s, n_probe, eval_s, n_eval in costs:
    print(f"| {name} | {probe_s:.1f} | {n_probe} | {eval_s:.1f} | {n_eval} | {probe_s / eval_s:.3f}x | "
          f"{(probe_s / n_probe) / (eval_s / n_eval):.3f}x |")
EOF
