#!/usr/bin/env python3
"""How much memory does the daemon hold when it is idle, before and after evaluating real checkpoints?

    python3 benches/idle_memory.py [--checkpoints 2] [--prompts 24] [--max-new-tokens 16]
                                   [--settle 10] [--safedrift BIN] [--model DIR]

The real `safedrift run` daemon (release build) watches a folder with a `directory` watcher whose
checkpoints run on the ONNX backend (2 threads) against the baseline `onnx:BASE`. BASE and each of
`--checkpoints` checkpoint folders are symlinks to the files of SmolLM2-135M-Instruct (fp32, 631 MB of
weights, from tools/fetch_smollm2.py; each checkpoint gets a small file of its own, so its content differs
from the base's and it is evaluated, not copied), so every evaluation loads two sessions of real weights. The
benchmark is `--prompts` of the builtin probes, keyword judge.

Read from /proc/PID/status:
* **idle before**: VmRSS once the daemon answers /healthz, before any checkpoint is dropped;
* **peak**: VmHWM, the most it held while evaluating;
* **idle after**: VmRSS `--settle` seconds after the last checkpoint was evaluated.

It also prints, at idle-after, RssAnon/RssFile and the five largest mappings from /proc/PID/smaps (glibc
arena heaps show as 64 MB [anonymous] mappings), which is where retained memory shows up.

The ratio idle-after / idle-before is printed; the target is an idle daemon under 200 MB. Numbers are
measurements and never fail the script. Writes only to a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def log(*a: object) -> None:
    print(*a, file=sys.stderr, flush=True)


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def get(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.load(r)
    except OSError:
        return None


def largest_mappings(pid: int) -> list[tuple[int, str]]:
    """(Rss in kB, what it maps) of each mapping of the process, largest first."""
    found = []
    name = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5:
            name = f"{fields[0]} {fields[5] if len(fields) > 5 else '[anonymous]'}"
        elif fields and fields[0] == "Rss:":
            found.append((int(fields[1]), name))
    return sorted(found, reverse=True)


def link_model(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).symlink_to(f.resolve())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoints", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--settle", type=float, default=10.0)
    ap.add_argument("--safedrift", default=str(ROOT / "target/release/safedrift"))
    ap.add_argument("--model", default=None)
    args = ap.parse_args()

    model = Path(args.model) if args.model else None
    if model is None:
        out = subprocess.run(
            [sys.executable, str(ROOT / "tools/fetch_smollm2.py")], capture_output=True, text=True, check=True
        )
        model = Path(out.stdout.strip().splitlines()[-1])
    if not Path(args.safedrift).exists():
        sys.exit(f"no {args.safedrift}: cargo build --release --bin safedrift")

    with tempfile.TemporaryDirectory(prefix="safedrift-idle-") as tmp:
        tmp = Path(tmp)
        link_model(model, tmp / "base")
        (tmp / "drop").mkdir()
        probes = [json.loads(l) for l in (ROOT / "src/builtin/probes.jsonl").read_text().splitlines() if l.strip()]
        harmful = [p for p in probes if not p.get("benign")][: args.prompts]
        bench = tmp / "bench.jsonl"
        bench.write_text("".join(json.dumps(p) + "\n" for p in harmful))
        port = 7300 + os.getpid() % 500
        config = tmp / "safedrift.toml"
        config.write_text(
            f"""data_dir = "{tmp}/data"
[api]
listen = "127.0.0.1:{port}"
[eval]
max_new_tokens = {args.max_new_tokens}
temperature = 0.0
[backends.local]
kind = "onnx"
device = "cpu"
threads = 2
max_batch = 8
[watchers.drop]
kind = "directory"
path = "{tmp}/drop"
schedule = "*/2 * * * * *"
backend = "local"
benchmarks = ["jsonl:{bench}"]
judge = "keyword"
baseline = "onnx:{tmp}/base"
settle = "1s"
"""
        )
        daemon = subprocess.Popen(
            [args.safedrift, "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=open(tmp / "daemon.log", "w"),
            env={**os.environ, "RUST_LOG": "info"},
        )
        try:
            base_url = f"http://127.0.0.1:{port}"
            deadline = time.time() + 60
            while get(f"{base_url}/healthz") is None:
                if time.time() > deadline or daemon.poll() is not None:
                    sys.exit("the daemon did not start:\n" + (tmp / "daemon.log").read_text()[-3000:])
                time.sleep(0.2)
            time.sleep(args.settle)
            before = status_kb(daemon.pid, "VmRSS")
            log(f"idle before: {before / 1024:.0f} MB")
            for i in range(args.checkpoints):
                # A file of its own makes each a model of its own content
                # (identical files would reuse the baseline's run).
                link_model(model, tmp / "drop" / f"ck{i}")
                (tmp / "drop" / f"ck{i}" / "checkpoint.txt").write_text(f"checkpoint {i}\n")
            start = time.time()
            while True:
                page = get(f"{base_url}/api/v1/checkpoints?limit=100") or {}
                items = page.get("checkpoints") or page.get("items") or []
                done = [c for c in items if c.get("status") in ("done", "failed")]
                if len(done) >= args.checkpoints:
                    break
                if daemon.poll() is not None or time.time() - start > 1800:
                    sys.exit("no evaluations:\n" + (tmp / "daemon.log").read_text()[-3000:])
                time.sleep(1)
            log(f"evaluated {args.checkpoints} checkpoints in {time.time() - start:.0f} s")
            time.sleep(args.settle)
            after = status_kb(daemon.pid, "VmRSS")
            peak = status_kb(daemon.pid, "VmHWM")
            print(
                f"idle before {before / 1024:.0f} MB, peak {peak / 1024:.0f} MB, idle after "
                f"{after / 1024:.0f} MB (after/before {after / before:.2f}x; target under 200 MB)"
            )
            anon = status_kb(daemon.pid, "RssAnon")
            file = status_kb(daemon.pid, "RssFile")
            threads = status_kb(daemon.pid, "Threads")
            print(f"idle after: anonymous {anon / 1024:.0f} MB, files {file / 1024:.0f} MB, {threads} threads")
            for rss, name in largest_mappings(daemon.pid)[:5]:
                print(f"  {rss / 1024:7.1f} MB  {name}")
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()


if __name__ == "__main__":
    main()
