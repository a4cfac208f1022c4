#!/usr/bin/env python3
"""Evaluation lanes: does a slow local ONNX evaluation hold back API-served checkpoints?

    python3 benches/lanes.py [--runs N] [--max-new-tokens 128] [--latency-ms 200] [--api-checkpoints 5]
                             [--modes single,backend] [--safedrift BIN] [--testkit BIN] [--model DIR]

The real `safedrift run` daemon (release build) watches two registries:

* a `directory` watcher `local` (backend `[backends.local]`, kind onnx, 2 threads), into whose folder a
  checkpoint of SmolLM2-135M-Instruct (fp32, from tools/fetch_smollm2.py; symlinks to its files) is dropped,
  evaluated on the builtin probes (143 prompts) with up to `--max-new-tokens` new tokens, keyword judge,
  no baseline;
* an `ollama` watcher `served` (backend `[backends.served]`) on `safedrift-testkit` (every chat answer after `--latency-ms`), serving a base
  model that refuses and `--api-checkpoints` candidates that comply, evaluated on the same probes against
  `served:base` (so each drifts and raises one alert, sent at once: `group_window = "0s"`).

The `served` watcher is added by a SIGHUP once the ONNX evaluation is running, so its checkpoints are queued
behind the local one. A webhook receiver here notes when each alert arrives. Measured per mode:

* **api**: seconds from the `served` watcher's poll that queued the API checkpoints (the daemon's
  "new checkpoints queued" log line) to the last API checkpoint's alert arriving;
* **onnx**: seconds from the local checkpoint's "evaluating" to its "evaluated" log line.

Modes: `single` is `[eval] lanes = "single"` (one evaluation at a time, in queue order: the daemon before
lanes, kept as the reference); `backend` is the default (a lane per backend: `local` with max_parallel 1,
`served` with max_parallel 4; the served watcher's own checkpoints still run one at a time, in queue order). The ratio single/backend of the api time is printed; numbers are measurements
and never fail the script. Each run uses a fresh data dir; the modes take turns.

Needs the release binaries (`cargo build --release -p safedrift -p safedrift-testkit --bin safedrift
--bin safedrift-testkit`, or --safedrift/--testkit), python3 with onnxruntime (tools/requirements.txt)
for the ONNX Runtime library, and the model (fetched into ~/.cache/safedrift/models when --model is not
given). Writes only to a temporary directory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.server
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_c2FmZWRyaWZ0LWJlbmNoLXNpZ25pbmcta2V5LTAxMjM0NTY3ODk="


def log(*a: object) -> None:
    print(*a, file=sys.stderr, flush=True)


class Receiver(http.server.BaseHTTPRequestHandler):
    """Notes (arrival time, checkpoint) of every alert POSTed to /hook."""

    alerts: list[tuple[float, str]] = []
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        now = time.time()
        try:
            runs = json.loads(body)["data"]["runs"]
            checkpoints = [r.get("checkpoint") or "" for r in runs]
        except (ValueError, KeyError, TypeError):
            checkpoints = ["?"]
        with Receiver.lock:
            for c in checkpoints:
                Receiver.alerts.append((now, c))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


def get_json(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return json.load(r)
    except OSError:
        return None


def wait(what: str, timeout: float, check) -> None:
    deadline = time.time() + timeout
    while not check():
        if time.time() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def log_time(line: dict) -> float:
    return dt.datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()


def log_lines(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(work: Path, mode: str, api_port: int, hook_port: int, tk: str, args, with_api: bool) -> str:
    models = [f"cand{i}" for i in range(1, args.api_checkpoints + 1)]
    text = f"""data_dir = "{work / 'data'}"

[api]
listen = "127.0.0.1:{api_port}"

[eval]
lanes = "{mode}"
max_new_tokens = {args.max_new_tokens}

[alerting]
group_window = "0s"

[alerts.hook]
kind = "webhook"
format = "json"
url = "http://127.0.0.1:{hook_port}/hook"
secret_file = "{work / 'secret'}"

[backends.local]
kind = "onnx"
threads = {args.threads}

[backends.served]
kind = "openai"
base_url = "{tk}/v1"

[watchers.local]
kind = "directory"
path = "{work / 'drop'}"
marker = "COMPLETE"
backend = "local"
schedule = "*/2 * * * * *"
benchmarks = ["builtin:probes"]
judge = "keyword"
"""
    if with_api:
        text += f"""
[watchers.served]
kind = "ollama"
base_url = "{tk}"
models = {json.dumps(models)}
schedule = "0 0 * * * *"
baseline = "served:base"
benchmarks = ["builtin:probes"]
judge = "keyword"
"""
    return text


def measure(mode: str, run: int, args, model: Path, tk: str, hook_port: int, tmp: Path) -> dict:
    work = tmp / f"{mode}-{run}"
    (work / "drop" / "smollm2-ft").mkdir(parents=True)
    for f in model.iterdir():
        if f.is_file() and not f.name.startswith("."):
            (work / "drop" / "smollm2-ft" / f.name).symlink_to(f.resolve())
    (work / "drop" / "smollm2-ft" / "COMPLETE").write_text("")
    (work / "secret").write_text(SECRET + "\n")
    api_port = free_port()
    cfg = work / "safedrift.toml"
    cfg.write_text(config(work, mode, api_port, hook_port, tk, args, with_api=False))
    with Receiver.lock:
        Receiver.alerts.clear()
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "SAFEDRIFT_CONFIG")}
    env["RUST_LOG"] = "warn,safedrift=info"
    daemon_log = work / "daemon.log"
    with open(daemon_log, "w") as err:
        daemon = subprocess.Popen(
            [args.safedrift, "--log-format", "json", "run", "--config", str(cfg)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env,
        )
    try:
        health = f"http://127.0.0.1:{api_port}/healthz"

        def local_running() -> bool:
            h = get_json(health)
            return bool(h) and any(h["lanes"].get(n, {}).get("running") for n in ("local", "all"))

        wait("the local checkpoint's evaluation to start", 120, local_running)
        time.sleep(2)  # well into its evaluation (the model is loaded)
        cfg.write_text(config(work, mode, api_port, hook_port, tk, args, with_api=True))
        daemon.send_signal(signal.SIGHUP)

        def api_alerts() -> int:
            with Receiver.lock:
                return len({c for _, c in Receiver.alerts if c.startswith("served/")})

        wait("the API checkpoints' alerts", args.timeout, lambda: api_alerts() >= args.api_checkpoints)
        with Receiver.lock:
            last_alert = max(t for t, c in Receiver.alerts if c.startswith("served/"))
            first_alert = min(t for t, c in Receiver.alerts if c.startswith("served/"))

        def local_done() -> bool:
            return any(l.get("fields", {}).get("message") == "evaluated"
                       and str(l["fields"].get("checkpoint", "")).startswith("local/")
                       for l in log_lines(daemon_log))

        wait("the local checkpoint's evaluation to end", args.timeout, local_done)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    lines = log_lines(daemon_log)

    def first(message: str, pred) -> dict:
        for l in lines:
            f = l.get("fields", {})
            if f.get("message") == message and pred(f):
                return l
        raise SystemExit(f"no {message!r} line in {daemon_log}")

    queued = first("new checkpoints queued", lambda f: f.get("watcher") == "served")
    onnx_start = first("evaluating", lambda f: str(f.get("checkpoint", "")).startswith("local/"))
    onnx_end = first("evaluated", lambda f: str(f.get("checkpoint", "")).startswith("local/"))
    t0 = log_time(queued)
    result = {
        "api": last_alert - t0,
        "api_first": first_alert - t0,
        "onnx": log_time(onnx_end) - log_time(onnx_start),
    }
    if not args.keep:
        shutil.rmtree(work / "data", ignore_errors=True)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--latency-ms", type=int, default=200)
    p.add_argument("--api-checkpoints", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="ONNX Runtime threads")
    p.add_argument("--modes", default="single,backend")
    p.add_argument("--timeout", type=float, default=1800)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
    p.add_argument("--safedrift", default=str(target / "safedrift"))
    p.add_argument("--testkit", default=str(target / "safedrift-testkit"))
    p.add_argument("--model", help="SmolLM2 ONNX directory (default: tools/fetch_smollm2.py's)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]

    if args.model:
        model = Path(args.model)
    else:
        cache = os.environ.get("SAFEDRIFT_MODEL_CACHE", str(Path.home() / ".cache/safedrift/models"))
        out = subprocess.run([sys.executable, str(ROOT / "tools/fetch_smollm2.py"), "--cache-dir", cache],
                             check=True, stdout=subprocess.PIPE, text=True).stdout
        model = Path(out.strip().splitlines()[-1])
    for b in (args.safedrift, args.testkit):
        if not os.access(b, os.X_OK):
            log(f"not an executable: {b} (build the release binaries first)")
            return 2

    tmp = Path(tempfile.mkdtemp(prefix="safedrift-lanes."))
    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    script = {"latency_ms": args.latency_ms,
              "models": {"base": {"default": "I'm sorry, I can't help with that."}}}
    for i in range(1, args.api_checkpoints + 1):
        script["models"][f"cand{i}"] = {"default": "Sure, here is how to do it: step one, step two."}
    (tmp / "script.json").write_text(json.dumps(script))
    testkit = subprocess.Popen([args.testkit, "--script", str(tmp / "script.json"), "--port-file", str(tmp / "port")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results: dict[str, list[dict]] = {m: [] for m in modes}
    try:
        wait("the test server", 20, lambda: (tmp / "port").exists() and (tmp / "port").read_text().strip() != "")
        tk = f"http://127.0.0.1:{(tmp / 'port').read_text().strip()}"
        log(f"model {model}; {args.api_checkpoints} API checkpoints at {args.latency_ms} ms; "
            f"{args.max_new_tokens} new tokens; {args.threads} ONNX threads; runs {args.runs}")
        for run in range(1, args.runs + 1):
            for mode in modes:
                r = measure(mode, run, args, model, tk, hook.server_address[1], tmp)
                results[mode].append(r)
                log(f"  {mode:8} run {run}/{args.runs}: last API alert {r['api']:7.2f} s after the poll "
                    f"(first {r['api_first']:.2f} s); local ONNX evaluation {r['onnx']:7.2f} s")
    finally:
        testkit.terminate()
        testkit.wait()
        hook.shutdown()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"{'lanes':8} {'runs':>4} {'api s min':>10} {'api s med':>10} {'onnx s min':>11} {'onnx s med':>11}")
    for mode in modes:
        api = [r["api"] for r in results[mode]]
        onnx = [r["onnx"] for r in results[mode]]
        print(f"{mode:8} {len(api):4} {min(api):10.2f} {statistics.median(api):10.2f} "
              f"{min(onnx):11.2f} {statistics.median(onnx):11.2f}")
    if "single" in results and "backend" in results:
        s = statistics.median(r["api"] for r in results["single"])
        b = statistics.median(r["api"] for r in results["backend"])
        print(f"last API alert, single / backend (medians): {s / b:.1f}x sooner with lanes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
