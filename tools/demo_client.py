#!/usr/bin/env python3
"""The demo's eyes: reads the running daemon through its HTTP API, and
receives its alerts as a signed webhook. Python standard library only.

    demo_client.py wait API N          wait until N checkpoints are evaluated, showing progress
    demo_client.py report API NAME     the drift comparison of the checkpoint whose key holds NAME
    demo_client.py receive PORT SECRET_FILE OUT_DIR
                                        a webhook receiver: verifies Standard Webhooks signatures
                                        (webhook-id, webhook-timestamp, webhook-signature), writes
                                        each verified alert to OUT_DIR/<webhook-id>.json, prints it
    demo_client.py wait-alert OUT_DIR TIMEOUT_S
                                        wait for the first alert the receiver got and summarize it
    demo_client.py table API           the README's table of the demo's checkpoints (Markdown), from
                                        the runs the daemon stored
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sys
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path


def get(api: str, path: str):
    with urllib.request.urlopen(f"{api}{path}", timeout=10) as r:
        return json.load(r)


def wait(api: str, n: int) -> None:
    last = None
    while True:
        try:
            health = get(api, "/healthz")
        except OSError:
            time.sleep(1)
            continue
        done = health.get("queue", {}).get("done", 0)
        runs = get(api, "/api/v1/runs?status=running&limit=5").get("items", [])
        for r in runs:
            doc = get(api, f"/api/v1/runs/{r['id']}")
            p = doc.get("progress") or {}
            if p:
                eta = p.get("eta_seconds")
                name = doc["model"]["spec"].split("/")[-1]
                line = (
                    f"   {name:<28} {p['done']:>4}/{p['total']} prompts"
                    f"  {p.get('rate', 0):5.2f}/s" + (f"  ETA {eta:4.0f}s" if eta is not None else "")
                )
                if sys.stderr.isatty():
                    print(f"\r{line}   ", end="", file=sys.stderr, flush=True)
                # Without a terminal: a line per model and about every 20%.
                elif (name, 5 * p["done"] // max(p["total"], 1)) != last:
                    print(line, file=sys.stderr, flush=True)
                    last = (name, 5 * p["done"] // max(p["total"], 1))
        if done >= n:
            if sys.stderr.isatty():
                print(file=sys.stderr)
            return
        time.sleep(3)


def pct(v) -> str:
    return "   n/a" if v is None else f"{100 * v:5.1f}%"


def report(api: str, name: str) -> None:
    runs = get(api, "/api/v1/runs?limit=50")["items"]
    mine = [r for r in runs if name in (r.get("checkpoint") or "")]
    if not mine:
        sys.exit(f"no run of a checkpoint named {name}")
    doc = get(api, f"/api/v1/runs/{mine[0]['id']}")
    base = doc.get("baseline") or {}
    m, b = doc["metrics"], base.get("metrics", {})
    print(f"checkpoint  {doc.get('checkpoint')}")
    print(f"baseline    {base.get('model', {}).get('spec')}")
    print(f"judge       {doc['judge']}")
    print()
    print(f"{'':32} {'baseline':>9} {'checkpoint':>11} {'change':>8}")
    for key, label in (("harmfulness_rate", "harmful answers"), ("refusal_rate", "refusals"),
                       ("over_refusal_rate", "over-refusals (benign)")):
        bv, cv = b.get(key), m.get(key)
        delta = "" if bv is None or cv is None else f"{100 * (cv - bv):+6.1f}"
        print(f"{label:32} {pct(bv):>9} {pct(cv):>11} {delta:>8}")
    print()
    print("per category (harmful answers):")
    for cat, c in sorted(doc.get("per_category", {}).items()):
        bc = base.get("per_category", {}).get(cat, {})
        bv, cv = bc.get("harmfulness_rate"), c.get("harmfulness_rate")
        delta = "" if bv is None or cv is None else f"{100 * (cv - bv):+6.1f}"
        print(f"  {cat:30} {pct(bv):>9} {pct(cv):>11} {delta:>8}")
    drift = doc.get("drift") or {}
    print()
    print("drift:", "DETECTED" if drift.get("detected") else "none")
    for f in drift.get("findings", []):
        if f.get("fired"):
            where = f" [{f['category']}]" if f.get("category") else ""
            if f["metric"].endswith("_rate"):
                change = f"{100 * f['baseline']:.1f}% -> {100 * f['candidate']:.1f}% (threshold +{100 * f['threshold']:.0f} points"
            else:
                change = f"{f['baseline']:.2f} -> {f['candidate']:.2f} (threshold +{f['threshold']:.2f}"
            print(f"  fired: {f['metric']}{where} {change}, p = {f['p_value']:.2g})")


def receive(port: int, secret_file: str, out: str) -> None:
    secret = Path(secret_file).read_text().strip()
    key = base64.b64decode(secret.removeprefix("whsec_"))
    Path(out).mkdir(parents=True, exist_ok=True)

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            wid = self.headers.get("webhook-id", "")
            ts = self.headers.get("webhook-timestamp", "")
            sigs = self.headers.get("webhook-signature", "").split()
            want = base64.b64encode(hmac.new(key, f"{wid}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
            ok = any(hmac.compare_digest(s.removeprefix("v1,"), want) for s in sigs if s.startswith("v1,"))
            fresh = ts.isdigit() and abs(time.time() - int(ts)) < 300
            if not (ok and fresh and wid.replace("_", "").isalnum()):
                self.send_response(401)
                self.end_headers()
                return
            Path(out, f"{wid}.json").write_bytes(body)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    HTTPServer(("127.0.0.1", port), Hook).serve_forever()


def wait_alert(out: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        files = sorted(Path(out).glob("*.json")) if Path(out).is_dir() else []
        if files:
            for f in files:
                a = json.loads(f.read_text())
                d = a.get("data", {})
                print(f"  {a.get('type')} {d.get('id')} severity={d.get('severity')}")
                print(f"  {d.get('summary')}")
                for r in d.get("runs", []):
                    if r.get("dashboard_url"):
                        print(f"  run: {r['dashboard_url']}")
            return
        time.sleep(1)
    sys.exit(f"no alert arrived within {timeout:.0f} s")


def table(api: str) -> None:
    """The baseline and each checkpoint, oldest first: harmful answers and
    over-refusal, and whether the run reused another's answers."""
    runs = get(api, "/api/v1/runs?limit=50")["items"]
    rows, seen = [], set()
    for r in sorted(runs, key=lambda r: r["id"]):
        doc = get(api, f"/api/v1/runs/{r['id']}")
        base = doc.get("baseline")
        if base and base["id"] not in seen:
            seen.add(base["id"])
            rows.append((f"baseline `{base['model']['spec']}`", base["metrics"], ""))
        if doc.get("checkpoint") and doc["id"] not in seen:
            seen.add(doc["id"])
            drift = "drift" if (doc.get("drift") or {}).get("detected") else "no drift"
            note = f"{drift}; answers reused from run {doc['copied_from']} (same files)" if doc.get("copied_from") else drift
            rows.append((f"checkpoint `{doc['checkpoint'].split('@')[0]}`", doc["metrics"], note))
    print("| model | harmful answers | over-refusal of benign prompts | decision |")
    print("|---|---|---|---|")
    for name, m, note in rows:
        print(f"| {name} | {pct(m.get('harmfulness_rate')).strip()} | {pct(m.get('over_refusal_rate')).strip()} | {note} |")


def main() -> None:
    cmd, *args = sys.argv[1:] or ["--help"]
    if cmd == "wait":
        wait(args[0], int(args[1]))
    elif cmd == "report":
        report(args[0], args[1])
    elif cmd == "receive":
        receive(int(args[0]), args[1], args[2])
    elif cmd == "wait-alert":
        wait_alert(args[0], float(args[1]))
    elif cmd == "table":
        table(args[0])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
