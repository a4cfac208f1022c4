#!/usr/bin/env python3
"""Padding at batch 32 on the classifier benchmark's input (the seed set's responses
repeated to 640, in file order, as benches/classifier.sh feeds them): tokens computed
when each batch is one call padded to its longest response, against the real tokens.

    python3 benches/classifier_padding.py [--cache-dir DIR] [--answers 640] [--batch 32]

Needs the converted encoder (python3 tools/fetch_minilm.py --cache-dir DIR) and tokenizers.
"""
import argparse
import json
import os
from pathlib import Path

from tokenizers import Tokenizer

root = Path(__file__).resolve().parent.parent
ap = argparse.ArgumentParser()
ap.add_argument("--cache-dir", type=Path, default=Path(os.environ.get(
    "SAFEDRIFT_MODEL_CACHE", Path.home() / ".cache/safedrift/models")))
ap.add_argument("--answers", type=int, default=640)
ap.add_argument("--batch", type=int, default=32)
args = ap.parse_args()
enc = args.cache_dir / "all-minilm-l6-v2"
tok = Tokenizer.from_file(str(enc / "tokenizer.json"))
tok.no_padding()
tok.enable_truncation(max_length=json.loads((enc / "encoder.json").read_text())["max_seq_length"])
rows = [json.loads(l) for l in open(root / "src/builtin/judge_seed.jsonl", encoding="utf-8") if l.strip()]
lens = [len(tok.encode(r["response"]).ids) for r in rows]
seq = [lens[i % len(lens)] for i in range(args.answers)]
padded = sum(len(seq[i:i + args.batch]) * max(seq[i:i + args.batch]) for i in range(0, len(seq), args.batch))
real = sum(seq)
print(f"responses: {min(lens)} to {max(lens)} tokens, mean {sum(lens) / len(lens):.1f}; "
      f"one call per batch of {args.batch} computes {padded} tokens for {real} real: {padded / real:.2f}x")
