#!/usr/bin/env python3
"""Reference implementation of the classifier judge with onnxruntime, tokenizers and numpy.

    python3 tools/classifier_reference.py probs JUDGE_DIR INPUT.json
    python3 tools/classifier_reference.py bench JUDGE_DIR INPUT.json [--batch 32] [--threads 2] [--repeat N]

JUDGE_DIR is a directory written by `safedrift distill` (head.json and encoder/). INPUT.json is
`{"pairs": [[prompt, response], ...]}`.

`probs` prints `{"labels": [...], "probabilities": [[p per label] per pair]}`, computed
independently of the Rust code from the same files: the tokenizer pads to the longest text of a
batch and truncates to encoder.json's max_seq_length, the ONNX encoder gives the sentence
embeddings, and numpy computes the features (response; or response, prompt, product), the
standardization, the logits and the softmax in float64.

`bench` judges the pairs in file order, `--batch` answers per step (each step encodes its
responses and its distinct prompts), with ONNX Runtime limited to `--threads` threads, and prints
`{"engine", "answers", "batch", "threads", "load_s", "wall_s", "answers_per_s"}`; the session
load is not timed. `--repeat` runs the whole input that many times and reports the fastest.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


class Judge:
    def __init__(self, judge_dir: Path, threads: int | None = None):
        self.head = json.loads((judge_dir / "head.json").read_text(encoding="utf-8"))
        enc = judge_dir / "encoder"
        meta = json.loads((enc / "encoder.json").read_text(encoding="utf-8"))
        self.tok = Tokenizer.from_file(str(enc / "tokenizer.json"))
        pad_id = self.tok.token_to_id("[PAD]") or 0
        self.tok.enable_padding(pad_id=pad_id, pad_token="[PAD]")  # to the longest of each batch
        self.tok.enable_truncation(max_length=int(meta["max_seq_length"]))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(str(enc / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.sess.get_inputs()}
        self.mean = np.array(self.head["feature_mean"], dtype=np.float64)
        self.scale = np.array(self.head["feature_scale"], dtype=np.float64)
        self.w = np.array(self.head["weights"], dtype=np.float64)
        self.b = np.array(self.head["bias"], dtype=np.float64)

    def embed(self, texts: list[str]) -> np.ndarray:
        enc = self.tok.encode_batch(texts)
        feed = {
            "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
        }
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = np.array([e.type_ids for e in enc], dtype=np.int64)
        return self.sess.run(["sentence_embedding"], feed)[0]

    def features(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        r = self.embed([p[1] for p in pairs]).astype(np.float32)
        if self.head["features"] == "response":
            return r
        prompts = sorted(set(p[0] for p in pairs))
        pe = self.embed(prompts).astype(np.float32)
        index = {p: i for i, p in enumerate(prompts)}
        p = pe[[index[q[0]] for q in pairs]]
        return np.concatenate([r, p, r * p], axis=1)

    def probabilities(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        x = self.features(pairs).astype(np.float64)
        z = (x - self.mean) / self.scale
        logits = z @ self.w.T + self.b
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)


def read_pairs(path: Path) -> list[tuple[str, str]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return [(p, r) for p, r in data["pairs"]]


def main() -> int:
    ap = argparse.ArgumentParser(description="classifier judge reference (onnxruntime + tokenizers + numpy)")
    ap.add_argument("mode", choices=["probs", "bench"])
    ap.add_argument("judge_dir", type=Path)
    ap.add_argument("input", type=Path)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    pairs = read_pairs(args.input)
    t0 = time.perf_counter()
    judge = Judge(args.judge_dir, args.threads)
    load_s = time.perf_counter() - t0
    if args.mode == "probs":
        probs = judge.probabilities(pairs)
        print(json.dumps({"labels": judge.head["labels"], "probabilities": probs.tolist()}))
        return 0
    best = None
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        for i in range(0, len(pairs), args.batch):
            probs = judge.probabilities(pairs[i : i + args.batch])
            probs.argmax(axis=1)
        wall = time.perf_counter() - t0
        best = wall if best is None else min(best, wall)
    print(json.dumps({
        "engine": "python onnxruntime " + ort.__version__,
        "answers": len(pairs),
        "batch": args.batch,
        "threads": args.threads,
        "load_s": round(load_s, 3),
        "wall_s": round(best, 4),
        "answers_per_s": round(len(pairs) / best, 2),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
