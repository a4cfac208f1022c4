#!/usr/bin/env python3
"""A stand-in OpenAI-compatible server for a checkpoint folder, for the `launch` backend's tests.

    python3 tests/chat_server.py --port PORT --dir DIR [--startup-delay S] [--delay S] [--exit-at-start]

It serves what the launch backend uses of a real engine's server (vLLM, llama.cpp's, TGI):
`GET /v1/models` (one model, id = the folder's name), `GET /health`, and `POST /v1/chat/completions`
answering every request with the text of DIR/answer.txt (so a "checkpoint" decides how it answers).
`--startup-delay` waits before listening (a model loading), `--delay` before each answer,
`--exit-at-start` prints an error and exits 1 (a server that cannot load the checkpoint). A
checkpoint folder may also hold `delay` (seconds before each answer) and `ignore-sigterm` (the server
ignores SIGTERM: one that must be killed). Standard library only.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--startup-delay", type=float, default=0.0)
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--exit-at-start", action="store_true")
    args = ap.parse_args()
    if args.exit_at_start:
        print(f"error: cannot load the model in {args.dir}: unsupported format", file=sys.stderr, flush=True)
        sys.exit(1)
    if (args.dir / "ignore-sigterm").exists():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(args.startup_delay)
    name = args.dir.name
    answer = (args.dir / "answer.txt").read_text().strip()
    delay = args.delay
    if (args.dir / "delay").exists():
        delay = float((args.dir / "delay").read_text())

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

        def reply(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/v1/models":
                self.reply(200, {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "local"}]})
            elif self.path == "/health":
                self.reply(200, {"status": "ok"})
            else:
                self.reply(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            request = json.loads(self.rfile.read(length) or b"{}")
            if self.path != "/v1/chat/completions":
                self.reply(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                return
            if request.get("model") != name:
                self.reply(404, {"error": {"message": f"model {request.get('model')!r} not found", "type": "not_found"}})
                return
            time.sleep(delay)
            self.reply(
                200,
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
                },
            )

    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
