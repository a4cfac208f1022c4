#!/usr/bin/env python3
"""Greedy decoding with onnxruntime's Python API: the reference the Rust ONNX backend is tested against.

    python3 tools/reference_decode.py MODEL_DIR --input prompts.json [--threads N]

prompts.json:

    {"prompts": [[token ids...], ...], "max_new_tokens": 32, "batch": "single" | "batched"}

MODEL_DIR is a model directory in optimum's layout (see llama_onnx.py). Decoding is greedy (argmax,
the lowest id on a tie) with a KV cache, on the CPUExecutionProvider with ORT's default graph
optimizations, and stops at any eos id of generation_config.json (else config.json).

- "single": each prompt is decoded alone at batch size 1.
- "batched": all prompts are decoded together, left-padded to the longest: attention_mask is 0 on
  the pads, position_ids = cumsum(mask) - 1 clipped at 0. A row that has produced eos keeps running
  (its further tokens are ignored) until every row is done or max_new_tokens is reached.

Prints one JSON document on stdout: {"outputs": [[new ids...], ...]}, in prompt order, eos not
included. Exit status 2 on bad input (the message says what is wrong).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


class InputError(Exception):
    pass


def load_eos(model_dir: Path) -> set[int]:
    for name in ("generation_config.json", "config.json"):
        path = model_dir / name
        if path.is_file():
            eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
            if eos is not None:
                return {int(e) for e in (eos if isinstance(eos, list) else [eos])}
    return set()


class Decoder:
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
        self.past_names = sorted(
            (n for n in inputs if n.startswith("past_key_values.")),
            key=lambda n: (int(n.split(".")[1]), n.split(".")[2]),
        )
        first = inputs["past_key_values.0.key"]
        self.kv_heads, self.head_dim = first.shape[1], first.shape[3]
        if not isinstance(self.kv_heads, int) or not isinstance(self.head_dim, int):
            raise InputError(f"{path}: past_key_values.0.key must have fixed kv_heads and head_dim dims")
        self.kv_dtype = np.float16 if first.type == "tensor(float16)" else np.float32
        self.output_names = [o.name for o in self.session.get_outputs()]

    def generate(self, prompts: list[list[int]], max_new_tokens: int, eos: set[int]) -> list[list[int]]:
        """Greedy decode a batch of prompts, left-padded; one list of new ids (no eos) per prompt."""
        batch = len(prompts)
        longest = max(len(p) for p in prompts)
        ids = np.zeros((batch, longest), dtype=np.int64)
        mask = np.zeros((batch, longest), dtype=np.int64)
        for row, prompt in enumerate(prompts):
            ids[row, longest - len(prompt) :] = prompt
            mask[row, longest - len(prompt) :] = 1
        past = {
            name: np.zeros((batch, self.kv_heads, 0, self.head_dim), dtype=self.kv_dtype) for name in self.past_names
        }
        outputs: list[list[int]] = [[] for _ in prompts]
        done = [False] * batch
        for _ in range(max_new_tokens):
            feed = {"input_ids": ids, "attention_mask": mask, **past}
            if self.has_position_ids:
                positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
                feed["position_ids"] = np.ascontiguousarray(positions[:, -ids.shape[1] :])
            results = dict(zip(self.output_names, self.session.run(self.output_names, feed), strict=True))
            logits = results["logits"][:, -1, :].astype(np.float32)
            next_ids = logits.argmax(axis=-1)  # first maximum: the lowest id wins a tie
            for row in range(batch):
                if done[row]:
                    continue
                token = int(next_ids[row])
                if token in eos:
                    done[row] = True
                else:
                    outputs[row].append(token)
            if all(done):
                break
            past = {name: results[name.replace("past_key_values.", "present.")] for name in self.past_names}
            ids = next_ids.astype(np.int64).reshape(batch, 1)
            mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
        return outputs


def read_request(path: Path) -> tuple[list[list[int]], int, str]:
    try:
        request = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: invalid JSON: {exc}") from exc
    if not isinstance(request, dict):
        raise InputError(f"{path}: expected a JSON object")
    unknown = set(request) - {"prompts", "max_new_tokens", "batch"}
    if unknown:
        raise InputError(f"{path}: unknown keys {sorted(unknown)} (expected prompts, max_new_tokens, batch)")
    prompts = request.get("prompts")
    if not isinstance(prompts, list) or not all(
        isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in p)
        for p in prompts
    ):
        raise InputError(f"{path}: `prompts` must be a list of non-empty lists of token ids (non-negative integers)")
    max_new = request.get("max_new_tokens")
    if not isinstance(max_new, int) or isinstance(max_new, bool) or max_new < 0:
        raise InputError(f"{path}: `max_new_tokens` must be a non-negative integer")
    mode = request.get("batch", "single")
    if mode not in ("single", "batched"):
        raise InputError(f'{path}: `batch` must be "single" or "batched", got {mode!r}')
    return prompts, max_new, mode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Greedy-decode token-id prompts with onnxruntime (CPU) and a KV cache; "
        'prints {"outputs": [[new ids...], ...]} (eos excluded).',
    )
    parser.add_argument("model_dir", type=Path, help="model directory (model.onnx, generation_config.json, ...)")
    parser.add_argument(
        "--input",
        type=Path,
        required=True,
        help='JSON file: {"prompts": [[ids...], ...], "max_new_tokens": N, "batch": "single"|"batched"}',
    )
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: ORT's choice)")
    args = parser.parse_args(argv)
    try:
        prompts, max_new, mode = read_request(args.input)
        eos = load_eos(args.model_dir)
        if not prompts or max_new == 0:
            outputs = [[] for _ in prompts]
        else:
            decoder = Decoder(args.model_dir, args.threads)
            logits = [o for o in decoder.session.get_outputs() if o.name == "logits"]
            if not logits:
                raise InputError(f"{args.model_dir / 'model.onnx'}: the graph has no output 'logits'")
            vocab = logits[0].shape[-1]
            if isinstance(vocab, int):
                bad = [t for p in prompts for t in p if t >= vocab]
                if bad:
                    raise InputError(f"{args.input}: token id {bad[0]} is outside the vocabulary (size {vocab})")
            if mode == "single":
                outputs = [decoder.generate([p], max_new, eos)[0] for p in prompts]
            else:
                outputs = decoder.generate(prompts, max_new, eos)
    except InputError as exc:
        print(f"reference_decode: error: {exc}", file=sys.stderr)
        return 2
    json.dump({"outputs": outputs}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
