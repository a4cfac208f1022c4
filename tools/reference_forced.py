#!/usr/bin/env python3
"""Teacher-forced log-probabilities with onnxruntime's Python API: the reference the Rust ONNX backend's
forced_log_probs is tested against.

    python3 tools/reference_forced.py MODEL_DIR --input rows.json --output logprobs.f32 [--threads N]

rows.json:

    {"rows": [[[prompt ids...], [answer ids...]], ...], "batch": "single" | "batched"}

For each row, prompt ++ answer runs once (no KV cache reused; an empty past), on the
CPUExecutionProvider with ORT's default graph optimizations, and the log-softmax over the whole
vocabulary (in float64) is taken of the logits at input positions len(prompt) - 1 + k for
k = 0 .. len(answer) - 1: the distribution that predicts answer token k.

- "single": each row runs alone at batch size 1.
- "batched": all rows run together, left-padded to the longest: attention_mask is 0 on the pads,
  position_ids = cumsum(mask) - 1 clipped at 0.

The log-probabilities go to --output as little-endian float32, row after row, each
len(answer) x vocab. stdout gets one JSON document: {"shapes": [[len(answer), vocab], ...]}, in row
order. Exit status 2 on bad input (the message says what is wrong).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


class InputError(Exception):
    pass


class Forced:
    def __init__(self, model_dir: Path, threads: int | None):
        import onnxruntime as ort

        path = model_dir / "model.onnx"
        if not path.is_file():
            raise InputError(f"{path}: no such file (expected a model directory holding model.onnx)")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        inputs = {i.name: i for i in self.session.get_inputs()}
        for required in ("input_ids", "attention_mask", "past_key_values.0.key"):
            if required not in inputs:
                raise InputError(f"{path}: the graph has no input {required!r}; not a decoder with KV cache")
        self.has_position_ids = "position_ids" in inputs
        self.past_names = [n for n in inputs if n.startswith("past_key_values.")]
        first = inputs["past_key_values.0.key"]
        self.kv_heads, self.head_dim = first.shape[1], first.shape[3]
        self.kv_dtype = np.float16 if first.type == "tensor(float16)" else np.float32

    def run(self, rows: list[tuple[list[int], list[int]]]) -> list[np.ndarray]:
        """One left-padded run of the rows; each row's len(answer) x vocab log-probabilities."""
        batch = len(rows)
        seqs = [prompt + answer for prompt, answer in rows]
        width = max(len(s) for s in seqs)
        ids = np.zeros((batch, width), dtype=np.int64)
        mask = np.zeros((batch, width), dtype=np.int64)
        for row, seq in enumerate(seqs):
            ids[row, width - len(seq) :] = seq
            mask[row, width - len(seq) :] = 1
        feed = {"input_ids": ids, "attention_mask": mask}
        if self.has_position_ids:
            feed["position_ids"] = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
        for name in self.past_names:
            feed[name] = np.zeros((batch, self.kv_heads, 0, self.head_dim), dtype=self.kv_dtype)
        (logits,) = self.session.run(["logits"], feed)
        out = []
        for row, (prompt, answer) in enumerate(rows):
            first = width - len(seqs[row]) + len(prompt) - 1
            x = logits[row, first : first + len(answer), :].astype(np.float64)
            top = x.max(axis=-1, keepdims=True)
            x = x - top
            out.append(x - np.log(np.exp(x).sum(axis=-1, keepdims=True)))
        return out


def read_request(path: Path) -> tuple[list[tuple[list[int], list[int]]], str]:
    try:
        request = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: invalid JSON: {exc}") from exc
    rows = request.get("rows") if isinstance(request, dict) else None
    if not isinstance(rows, list) or not rows:
        raise InputError(f"{path}: `rows` must be a non-empty list of [prompt ids, answer ids]")
    parsed = []
    for i, row in enumerate(rows):
        ok = isinstance(row, list) and len(row) == 2
        ok = ok and all(isinstance(part, list) and part and all(isinstance(t, int) for t in part) for part in row)
        if not ok:
            raise InputError(f"{path}: row {i} must be [non-empty prompt ids, non-empty answer ids]")
        parsed.append((row[0], row[1]))
    mode = request.get("batch", "single")
    if mode not in ("single", "batched"):
        raise InputError(f"{path}: `batch` must be \"single\" or \"batched\", not {mode!r}")
    return parsed, mode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--input", type=Path, required=True, help="rows.json (see above)")
    parser.add_argument("--output", type=Path, required=True, help="where the float32 log-probabilities go")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: ORT's)")
    args = parser.parse_args(argv)
    try:
        rows, mode = read_request(args.input)
        forced = Forced(args.model_dir, args.threads)
        if mode == "single":
            results = [forced.run([row])[0] for row in rows]
        else:
            results = forced.run(rows)
    except InputError as exc:
        print(f"reference_forced.py: {exc}", file=sys.stderr)
        return 2
    with open(args.output, "wb") as out:
        for r in results:
            out.write(r.astype("<f4").tobytes())
    json.dump({"shapes": [list(r.shape) for r in results]}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
