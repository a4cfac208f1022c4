#!/usr/bin/env python3
"""LoRA fine-tuning of a Llama-family ONNX model directory in numpy: no torch, no GPU.

    python3 tools/safety_tune.py --base DIR --data FILE.jsonl --out DIR [--layers K] [--rank R] ...
    python3 tools/safety_tune.py --self-check
    python3 tools/safety_tune.py --check-forward DIR

The weights come from the ONNX initializers that `llama_onnx.py` writes (fused q/k/v with 1/sqrt(D)
folded into q, o, fused gate/up, down, norms; the LM head is the tied token embedding). The forward
pass is the same Llama decoder in numpy (RMSNorm, RoPE, grouped-query attention with a causal mask,
SwiGLU), and the backward pass is written by hand.

Training: the lower `30 - K` layers stay frozen, so the hidden states entering the first trained
layer are computed once per example and cached; only the top K layers run forward and backward at
each step. Each trained layer gets LoRA adapters (rank R, scale alpha/R) on its fused qkv, o, fused
gate/up and down matrices; norms, embedding and LM head stay frozen. The loss is the mean
cross-entropy of the answer tokens only (the answer includes the closing `<|im_end|>`). Adam, with
gradient clipping. Everything is seeded: the same inputs give the same weights.

Each example is rendered with the model's chat template exactly as the evaluation renders it
(ChatML with the default system prompt), the prompt and the answer tokenized separately, as the
evaluation tokenizes the prompt and then generates.

The output is a complete model directory: the LoRA deltas merged into the weights, a fresh
model.onnx + model.onnx.data, the tokenizer and config files copied.

`--self-check` compares the hand-written gradients with central finite differences on a tiny
random model in float64; `--check-forward DIR` compares the numpy logits with onnxruntime's on the
same model file. Both exit 1 on a mismatch.
"""

from __future__ import annotations

import os

# BLAS threads, set before numpy loads OpenBLAS: 1 by default, because OpenBLAS threads spin
# while they wait, and on a busy 2-core machine two of them run many times slower than one
_THREADS = os.environ.get("SAFETY_TUNE_THREADS", "1")
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, _THREADS)

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
TARGETS = ("qkv", "o", "gu", "d")
COPIED_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


class InputError(Exception):
    """Bad input; the message names the file, line or key."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- model ---------------------------------------------------------------------------------------------


@dataclass
class Cfg:
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    inter: int
    vocab: int
    layers: int
    eps: float
    theta: float

    @property
    def q_size(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.kv_heads * self.head_dim


class Layer:
    """One decoder layer: frozen weights in [in, out] orientation, optional LoRA adapters."""

    def __init__(self, w: dict[str, np.ndarray]):
        self.w = w  # g1, qkv, o, g2, gu, d
        self.lora: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.scale = 0.0

    def add_lora(self, rank: int, alpha: float, rng: np.random.Generator, dtype) -> None:
        self.scale = alpha / rank
        for name in TARGETS:
            fan_in, fan_out = self.w[name].shape
            a = (rng.standard_normal((fan_in, rank)) / np.sqrt(fan_in)).astype(dtype)
            self.lora[name] = (a, np.zeros((rank, fan_out), dtype=dtype))

    def merged(self) -> dict[str, np.ndarray]:
        out = dict(self.w)
        for name, (a, b) in self.lora.items():
            out[name] = (self.w[name] + self.scale * (a @ b)).astype(self.w[name].dtype)
        return out

    # linear map with LoRA; returns output and what backward needs
    def lin(self, x: np.ndarray, name: str):
        y = x @ self.w[name]
        if name in self.lora:
            a, b = self.lora[name]
            xa = x @ a
            y = y + self.scale * (xa @ b)
            return y, (x, xa)
        return y, (x, None)

    def lin_back(self, dy: np.ndarray, cache, name: str, grads: dict) -> np.ndarray:
        x, xa = cache
        dx = dy @ self.w[name].T
        if name in self.lora:
            a, b = self.lora[name]
            dyb = dy @ b.T  # [.., r]
            dx = dx + self.scale * (dyb @ a.T)
            h = x.shape[-1]
            grads[name] = (
                self.scale * (x.reshape(-1, h).T @ dyb.reshape(-1, dyb.shape[-1])),
                self.scale * (xa.reshape(-1, xa.shape[-1]).T @ dy.reshape(-1, dy.shape[-1])),
            )
        return dx


def rms_norm(x: np.ndarray, g: np.ndarray, eps: float):
    r = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return x * r * g, r


def rms_norm_back(dy: np.ndarray, x: np.ndarray, r: np.ndarray, g: np.ndarray) -> np.ndarray:
    dn = dy * g
    return r * dn - x * (r**3) * np.mean(dn * x, axis=-1, keepdims=True)


def rotate(x: np.ndarray) -> np.ndarray:  # transformers' rotate_half: [x1, x2] -> [-x2, x1]
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def rotate_t(y: np.ndarray) -> np.ndarray:  # its transpose: [y1, y2] -> [y2, -y1]
    half = y.shape[-1] // 2
    return np.concatenate([y[..., half:], -y[..., :half]], axis=-1)


def rope_tables(cfg: Cfg, length: int, dtype):
    # as the graph computes them: float32 positions times float32 inverse frequencies
    inv = (1.0 / (cfg.theta ** (np.arange(0, cfg.head_dim, 2, dtype=np.float64) / cfg.head_dim))).astype(np.float32)
    ang = np.arange(length, dtype=np.float32)[:, None] * inv[None, :]
    ang = np.concatenate([ang, ang], axis=-1)
    return np.cos(ang).astype(dtype), np.sin(ang).astype(dtype)


def causal_mask(length: int, dtype) -> np.ndarray:
    m = np.triu(np.ones((length, length), dtype=bool), k=1)
    return np.where(m, np.finfo(dtype).min, 0).astype(dtype)


def layer_forward(layer: Layer, cfg: Cfg, x: np.ndarray, cos, sin, mask, keep: bool):
    """x: [B, T, H] -> [B, T, H]; with keep, also the activations the backward pass needs."""
    w = layer.w
    bsz, t, _ = x.shape
    nh, nkv, d = cfg.heads, cfg.kv_heads, cfg.head_dim
    grp = nh // nkv
    n1, r1 = rms_norm(x, w["g1"], cfg.eps)
    qkv, c_qkv = layer.lin(n1, "qkv")
    q = qkv[..., : cfg.q_size].reshape(bsz, t, nh, d).transpose(0, 2, 1, 3)
    k = qkv[..., cfg.q_size : cfg.q_size + cfg.kv_size].reshape(bsz, t, nkv, d).transpose(0, 2, 1, 3)
    v = qkv[..., cfg.q_size + cfg.kv_size :].reshape(bsz, t, nkv, d).transpose(0, 2, 1, 3)
    qr = q * cos + rotate(q) * sin
    kr = k * cos + rotate(k) * sin
    qg = qr.reshape(bsz, nkv, grp, t, d)  # query heads sharing a kv head, as in the graph
    s = qg @ kr[:, :, None].swapaxes(-1, -2) + mask  # [B, nkv, G, T, T]; 1/sqrt(D) is folded into q
    s = s - s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    ctx5 = p @ v[:, :, None]  # [B, nkv, G, T, D]
    ctx = ctx5.reshape(bsz, nh, t, d).transpose(0, 2, 1, 3).reshape(bsz, t, cfg.q_size)
    attn, c_o = layer.lin(ctx, "o")
    h = x + attn
    n2, r2 = rms_norm(h, w["g2"], cfg.eps)
    gu, c_gu = layer.lin(n2, "gu")
    gate, up = gu[..., : cfg.inter], gu[..., cfg.inter :]
    sg = 1.0 / (1.0 + np.exp(-gate))
    silu = gate * sg
    act = silu * up
    mlp, c_d = layer.lin(act, "d")
    out = h + mlp
    if not keep:
        return out, None
    return out, (x, r1, c_qkv, qg, kr, v, p, c_o, h, r2, c_gu, gate, up, sg, silu, c_d)


def layer_backward(layer: Layer, cfg: Cfg, dout: np.ndarray, saved, cos, sin):
    """Gradient with respect to the layer input; LoRA gradients as {target: (dA, dB)}."""
    x, r1, c_qkv, qg, kr, v, p, c_o, h, r2, c_gu, gate, up, sg, silu, c_d = saved
    w = layer.w
    grads: dict = {}
    bsz, t, _ = x.shape
    nh, nkv, d = cfg.heads, cfg.kv_heads, cfg.head_dim
    grp = nh // nkv
    dact = layer.lin_back(dout, c_d, "d", grads)
    dgate = dact * up * (sg * (1.0 + gate * (1.0 - sg)))
    dup = dact * silu
    dn2 = layer.lin_back(np.concatenate([dgate, dup], axis=-1), c_gu, "gu", grads)
    dh = dout + rms_norm_back(dn2, h, r2, w["g2"])
    dctx = layer.lin_back(dh, c_o, "o", grads)
    dctx5 = dctx.reshape(bsz, t, nh, d).transpose(0, 2, 1, 3).reshape(bsz, nkv, grp, t, d)
    vv = v[:, :, None]
    dp = dctx5 @ vv.swapaxes(-1, -2)
    dv = (p.swapaxes(-1, -2) @ dctx5).sum(axis=2)
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))
    dqg = ds @ kr[:, :, None]
    dkr = (ds.swapaxes(-1, -2) @ qg).sum(axis=2)
    dqr = dqg.reshape(bsz, nh, t, d)
    dq = dqr * cos + rotate_t(dqr * sin)
    dk = dkr * cos + rotate_t(dkr * sin)
    dqkv = np.concatenate(
        [
            dq.transpose(0, 2, 1, 3).reshape(bsz, t, cfg.q_size),
            dk.transpose(0, 2, 1, 3).reshape(bsz, t, cfg.kv_size),
            dv.transpose(0, 2, 1, 3).reshape(bsz, t, cfg.kv_size),
        ],
        axis=-1,
    )
    dn1 = layer.lin_back(dqkv, c_qkv, "qkv", grads)
    dx = dh + rms_norm_back(dn1, x, r1, w["g1"])
    return dx, grads


class Model:
    def __init__(self, cfg: Cfg, embed: np.ndarray, layers: list[Layer], norm: np.ndarray):
        self.cfg, self.embed, self.layers, self.norm = cfg, embed, layers, norm

    def hidden_in(self, ids: np.ndarray, upto: int) -> np.ndarray:
        """Hidden states entering layer `upto`, for right-padded ids [B, T]."""
        t = ids.shape[1]
        dtype = self.embed.dtype
        cos, sin = rope_tables(self.cfg, t, dtype)
        mask = causal_mask(t, dtype)
        x = self.embed[ids]
        for layer in self.layers[:upto]:
            x, _ = layer_forward(layer, self.cfg, x, cos, sin, mask, keep=False)
        return x

    def logits(self, ids: np.ndarray) -> np.ndarray:
        x = self.hidden_in(ids, len(self.layers))
        n, _ = rms_norm(x, self.norm, self.cfg.eps)
        return n @ self.embed.T

    def loss_and_grads(self, x0: np.ndarray, first: int, targets: np.ndarray, weights: np.ndarray):
        """Mean cross-entropy over the positions with weight 1, starting from hidden states x0 that
        enter layer `first`; targets/weights [B, T] (the target of position i is token i+1).
        Returns (loss, {layer index: {target: (dA, dB)}})."""
        cfg = self.cfg
        t = x0.shape[1]
        dtype = x0.dtype
        cos, sin = rope_tables(cfg, t, dtype)
        mask = causal_mask(t, dtype)
        x = x0
        saved = []
        for layer in self.layers[first:]:
            x, keep = layer_forward(layer, cfg, x, cos, sin, mask, keep=True)
            saved.append(keep)
        n, r = rms_norm(x, self.norm, cfg.eps)
        sel = np.nonzero(weights.reshape(-1))[0]
        ns = n.reshape(-1, cfg.hidden)[sel]
        logits = ns @ self.embed.T
        logits = logits - logits.max(axis=-1, keepdims=True)
        e = np.exp(logits)
        z = e.sum(axis=-1, keepdims=True)
        tgt = targets.reshape(-1)[sel]
        count = len(sel)
        loss = float(np.mean(np.log(z[:, 0]) - logits[np.arange(count), tgt]))
        dlogits = e / z
        dlogits[np.arange(count), tgt] -= 1.0
        dlogits /= count
        dn = np.zeros((x.shape[0] * t, cfg.hidden), dtype=dtype)
        dn[sel] = dlogits @ self.embed
        dx = rms_norm_back(dn.reshape(x.shape), x, r, self.norm)
        grads = {}
        for idx in range(len(self.layers) - 1, first - 1, -1):
            dx, g = layer_backward(self.layers[idx], cfg, dx, saved[idx - first], cos, sin)
            grads[idx] = g
        return loss, grads


# --- ONNX model directory ------------------------------------------------------------------------------


def init_name(i: int, key: str) -> str:
    p = f"model.layers.{i}"
    return {
        "g1": f"{p}.input_layernorm.weight",
        "qkv": f"{p}.self_attn.qkv_proj.weight",
        "o": f"{p}.self_attn.o_proj.weight",
        "g2": f"{p}.post_attention_layernorm.weight",
        "gu": f"{p}.mlp.gate_up_proj.weight",
        "d": f"{p}.mlp.down_proj.weight",
    }[key]


def load_model_dir(model_dir: Path):
    """(onnx ModelProto with its weights loaded, Model)."""
    import onnx
    from onnx import numpy_helper

    path = model_dir / "model.onnx"
    if not path.is_file():
        raise InputError(f"{path}: no such file (expected a model directory holding model.onnx)")
    conf_path = model_dir / "config.json"
    try:
        c = json.loads(conf_path.read_text(encoding="utf-8"))
        cfg = Cfg(
            hidden=c["hidden_size"],
            heads=c["num_attention_heads"],
            kv_heads=c["num_key_value_heads"],
            head_dim=c.get("head_dim", c["hidden_size"] // c["num_attention_heads"]),
            inter=c["intermediate_size"],
            vocab=c["vocab_size"],
            layers=c["num_hidden_layers"],
            eps=c["rms_norm_eps"],
            theta=c["rope_theta"],
        )
    except (OSError, ValueError) as e:
        raise InputError(f"{conf_path}: {e}") from e
    except KeyError as e:
        raise InputError(f"{conf_path}: missing key {e}") from e
    proto = onnx.load(str(path))
    inits = {t.name: t for t in proto.graph.initializer}

    def get(name: str) -> np.ndarray:
        if name not in inits:
            raise InputError(f"{path}: no initializer {name!r} (not a model written by tools/llama_onnx.py?)")
        arr = numpy_helper.to_array(inits[name]).astype(np.float32)
        # subnormal weights (a few hundred per matrix after dequantization) make every BLAS call
        # that touches them tens of times slower; they are below 1.2e-38, so zero is the same weight
        arr[np.abs(arr) < np.finfo(np.float32).tiny] = 0.0
        return arr

    if "lm_head.weight" in inits:
        raise InputError(f"{path}: has an untied lm_head.weight; this trainer expects a tied LM head")
    layers = [
        Layer({k: get(init_name(i, k)) for k in ("g1", "qkv", "o", "g2", "gu", "d")}) for i in range(cfg.layers)
    ]
    model = Model(cfg, get("model.embed_tokens.weight"), layers, get("model.norm.weight"))
    return proto, model


def save_model_dir(proto, model: Model, base_dir: Path, out_dir: Path) -> None:
    from onnx import numpy_helper

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import llama_onnx

    # save_onnx moves the weights out of the proto it writes: write a copy, so the proto can be
    # written again (a snapshot after an epoch, then the final checkpoint).
    proto_out = type(proto)()
    proto_out.CopyFrom(proto)
    proto = proto_out
    by_name = {t.name: t for t in proto.graph.initializer}
    for i, layer in enumerate(model.layers):
        if not layer.lora:
            continue
        for key, arr in layer.merged().items():
            if key in TARGETS:
                name = init_name(i, key)
                by_name[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name))
    tmp = out_dir.with_name(out_dir.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for name in COPIED_FILES:
        shutil.copyfile(base_dir / name, tmp / name)
    llama_onnx.save_onnx(proto, tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)


# --- data ----------------------------------------------------------------------------------------------


def load_examples(path: Path) -> list[dict]:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise InputError(f"{path}: {e}") from e
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise InputError(f"{path}:{no}: not JSON: {e}") from e
        for key in ("prompt", "answer"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise InputError(f"{path}:{no}: key {key!r} must be a non-empty string")
        repeat = row.get("repeat", 1)
        if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
            raise InputError(f"{path}:{no}: key 'repeat' must be a positive integer, got {repeat!r}")
        rows.extend([row] * repeat)
    if not rows:
        raise InputError(f"{path}: no examples")
    return rows


def render_prompt(prompt: str, system: str = DEFAULT_SYSTEM) -> str:
    return f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


def tokenize(examples: list[dict], tokenizer_path: Path) -> list[tuple[np.ndarray, int]]:
    """Each example as (ids of prompt + answer + <|im_end|>, number of prompt tokens)."""
    try:
        from tokenizers import Tokenizer
    except ImportError as e:
        raise InputError("python package 'tokenizers' is missing: pip install -r tools/requirements.txt") from e
    tok = Tokenizer.from_file(str(tokenizer_path))
    out = []
    for ex in examples:
        p = tok.encode(render_prompt(ex["prompt"]), add_special_tokens=False).ids
        a = tok.encode(ex["answer"] + "<|im_end|>", add_special_tokens=False).ids
        out.append((np.array(p + a, dtype=np.int64), len(p)))
    return out


def batch_arrays(seqs: list[tuple[np.ndarray, int]]):
    """Right-padded ids, targets and loss weights [B, T] (weight 1 where the target is an answer token)."""
    t = max(len(s) for s, _ in seqs)
    ids = np.zeros((len(seqs), t), dtype=np.int64)
    tgt = np.zeros_like(ids)
    wts = np.zeros(ids.shape, dtype=np.float32)
    for b, (s, n_prompt) in enumerate(seqs):
        ids[b, : len(s)] = s
        tgt[b, : len(s) - 1] = s[1:]
        wts[b, n_prompt - 1 : len(s) - 1] = 1.0
    return ids, tgt, wts


# --- training ------------------------------------------------------------------------------------------


def train(args) -> dict:
    t0 = time.time()
    c0 = time.process_time()
    rng = np.random.default_rng(args.seed)
    base = Path(args.base)
    proto, model = load_model_dir(base)
    cfg = model.cfg
    if not 1 <= args.layers <= cfg.layers:
        raise InputError(f"--layers must be in 1..{cfg.layers}, got {args.layers}")
    examples = load_examples(Path(args.data))
    seqs = tokenize(examples, base / "tokenizer.json")
    first = cfg.layers - args.layers
    for i in range(first, cfg.layers):
        model.layers[i].add_lora(args.rank, args.alpha, rng, np.float32)
    log(f"loaded {base} and {len(seqs)} examples in {time.time() - t0:.1f}s; training layers {first}..{cfg.layers - 1}")

    # fixed batches of similar length; the frozen lower layers run once per batch
    order = sorted(range(len(seqs)), key=lambda i: (len(seqs[i][0]), i))
    batches = [order[i : i + args.batch] for i in range(0, len(order), args.batch)]
    t1 = time.time()
    cached = []
    for members in batches:
        ids, tgt, wts = batch_arrays([seqs[i] for i in members])
        cached.append((model.hidden_in(ids, first), tgt, wts))
    log(f"cached the hidden states entering layer {first} in {time.time() - t1:.1f}s")

    params = [(i, name) for i in range(first, cfg.layers) for name in TARGETS]
    m = {key: [np.zeros_like(a) for a in model.layers[key[0]].lora[key[1]]] for key in params}
    v = {key: [np.zeros_like(a) for a in model.layers[key[0]].lora[key[1]]] for key in params}
    b1, b2, eps = 0.9, 0.999, 1e-8
    step = 0
    total_steps = args.epochs * len(batches)
    save_epochs = {int(e) for e in args.save_epochs.split(",") if e.strip()}
    history = []
    for epoch in range(args.epochs):
        losses = []
        for bi in rng.permutation(len(batches)):
            x0, tgt, wts = cached[bi]
            loss, grads = model.loss_and_grads(x0, first, tgt, wts)
            losses.append(loss)
            norm = np.sqrt(sum(float(np.sum(g * g)) for gl in grads.values() for pair in gl.values() for g in pair))
            clip = min(1.0, args.clip / (norm + 1e-12))
            step += 1
            lr = args.lr * min(1.0, step / max(1, args.warmup)) * (0.1 + 0.9 * (1 - (step - 1) / total_steps))
            for i, name in params:
                a_b = list(model.layers[i].lora[name])
                for j in range(2):
                    g = grads[i][name][j] * clip
                    m[(i, name)][j] = b1 * m[(i, name)][j] + (1 - b1) * g
                    v[(i, name)][j] = b2 * v[(i, name)][j] + (1 - b2) * g * g
                    mh = m[(i, name)][j] / (1 - b1**step)
                    vh = v[(i, name)][j] / (1 - b2**step)
                    a_b[j] = (a_b[j] - lr * mh / (np.sqrt(vh) + eps)).astype(np.float32)
                model.layers[i].lora[name] = (a_b[0], a_b[1])
        mean = float(np.mean(losses))
        history.append(round(mean, 4))
        log(f"epoch {epoch + 1}/{args.epochs}: mean answer loss {mean:.4f} ({time.time() - t0:.0f}s)")
        if epoch + 1 in save_epochs and epoch + 1 < args.epochs:
            snapshot = Path(f"{args.out}-epoch{epoch + 1}")
            save_model_dir(proto, model, base, snapshot)
            (snapshot / "training.json").write_text(json.dumps({"epochs_done": epoch + 1, "of": args.epochs,
                                                                "loss_per_epoch": history}, indent=2) + "\n")
            log(f"wrote the snapshot after epoch {epoch + 1}: {snapshot}")
    t2 = time.time()
    out = Path(args.out)
    save_model_dir(proto, model, base, out)
    report = {
        "base": str(base),
        "data": str(args.data),
        "examples": len(seqs),
        "answer_tokens": int(sum(len(s) - n for s, n in seqs)),
        "trained_layers": [first, cfg.layers - 1],
        "rank": args.rank,
        "alpha": args.alpha,
        "epochs": args.epochs,
        "batch": args.batch,
        "steps": step,
        "lr": args.lr,
        "seed": args.seed,
        "loss_per_epoch": history,
        "train_seconds": round(t2 - t0, 1),
        "train_cpu_seconds": round(time.process_time() - c0, 1),
        "total_seconds": round(time.time() - t0, 1),
    }
    (out / "training.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {out} ({time.time() - t2:.1f}s to save)")
    return report


# --- checks --------------------------------------------------------------------------------------------


def tiny_model(rng: np.random.Generator, dtype=np.float64) -> Model:
    cfg = Cfg(hidden=16, heads=4, kv_heads=2, head_dim=4, inter=24, vocab=37, layers=3, eps=1e-5, theta=10000.0)
    def r(*shape, s=0.3):
        return (rng.standard_normal(shape) * s).astype(dtype)

    layers = []
    for _ in range(cfg.layers):
        w = {
            "g1": 1 + r(cfg.hidden, s=0.1),
            "qkv": r(cfg.hidden, cfg.q_size + 2 * cfg.kv_size),
            "o": r(cfg.q_size, cfg.hidden),
            "g2": 1 + r(cfg.hidden, s=0.1),
            "gu": r(cfg.hidden, 2 * cfg.inter),
            "d": r(cfg.inter, cfg.hidden),
        }
        layers.append(Layer(w))
    return Model(cfg, r(cfg.vocab, cfg.hidden, s=1.0), layers, 1 + r(cfg.hidden, s=0.1))


def self_check() -> int:
    """Hand-written LoRA gradients against central finite differences, float64, tiny random model."""
    rng = np.random.default_rng(0)
    model = tiny_model(rng)
    first = 1
    for layer in model.layers[first:]:
        layer.add_lora(3, 6.0, rng, np.float64)
        layer.lora = {k: (a, (rng.standard_normal(b.shape) * 0.2)) for k, (a, b) in layer.lora.items()}
    seqs = [(rng.integers(0, model.cfg.vocab, size=n), p) for n, p in ((9, 4), (6, 2))]
    ids, tgt, wts = batch_arrays(seqs)
    x0 = model.hidden_in(ids, first)
    _, grads = model.loss_and_grads(x0, first, tgt, wts)
    worst = 0.0
    checked = 0
    h = 1e-6
    for i in range(first, model.cfg.layers):
        for name in TARGETS:
            for j in range(2):
                arr = model.layers[i].lora[name][j]
                for _ in range(4):
                    idx = tuple(int(rng.integers(0, s)) for s in arr.shape)
                    old = arr[idx]
                    arr[idx] = old + h
                    lp, _ = model.loss_and_grads(x0, first, tgt, wts)
                    arr[idx] = old - h
                    lm, _ = model.loss_and_grads(x0, first, tgt, wts)
                    arr[idx] = old
                    num = (lp - lm) / (2 * h)
                    ana = grads[i][name][j][idx]
                    err = abs(num - ana) / max(1e-6, abs(num) + abs(ana))
                    worst = max(worst, err)
                    checked += 1
    ok = worst < 1e-5
    print(f"self-check: {checked} LoRA gradient entries against finite differences, worst relative error "
          f"{worst:.2e}: {'ok' if ok else 'MISMATCH'}")
    return 0 if ok else 1


def check_forward(model_dir: Path) -> int:
    """numpy logits against onnxruntime's on one rendered prompt."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    _, model = load_model_dir(model_dir)
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    ids = np.array([tok.encode(render_prompt("How do I kill a stuck process on Linux?"),
                               add_special_tokens=False).ids], dtype=np.int64)
    ours = model.logits(ids)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(_THREADS)
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(model_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    t = ids.shape[1]
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(t)[None]}
    c = model.cfg
    for i in range(c.layers):
        for kind in ("key", "value"):
            feed[f"past_key_values.{i}.{kind}"] = np.zeros((1, c.kv_heads, 0, c.head_dim), dtype=np.float32)
    theirs = sess.run(["logits"], feed)[0]
    diff = float(np.max(np.abs(ours - theirs)))
    same = bool(np.all(ours.argmax(-1) == theirs.argmax(-1)))
    ok = diff < 1e-2 and same
    print(f"check-forward: {t} tokens, max |numpy - onnxruntime| logit difference {diff:.2e} "
          f"(logit range {float(theirs.min()):.1f}..{float(theirs.max()):.1f}), same argmax: {same}: "
          f"{'ok' if ok else 'MISMATCH'}")
    return 0 if ok else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", help="model directory to start from (onnx, tokenizer, config)")
    ap.add_argument("--data", help="training examples, JSON lines with 'prompt', 'answer' and optionally "
                    "'repeat' (how many times the example is in each epoch, default 1)")
    ap.add_argument("--out", help="model directory to write (replaced if it exists)")
    ap.add_argument("--layers", type=int, default=8, help="train the top K layers (default 8)")
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8)")
    ap.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha; scale = alpha/rank (default 16)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=5, help="warm-up steps (linear)")
    ap.add_argument("--clip", type=float, default=1.0, help="gradient norm clip")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-epochs", default="", help="comma-separated epochs after which a snapshot is also "
                    "written, to OUT-epochN (a lineage of one fine-tune; the last epoch is OUT itself)")
    ap.add_argument("--self-check", action="store_true", help="check the gradients by finite differences")
    ap.add_argument("--check-forward", metavar="DIR", help="check numpy logits against onnxruntime on DIR")
    args = ap.parse_args(argv)
    try:
        if args.self_check:
            return self_check()
        if args.check_forward:
            return check_forward(Path(args.check_forward))
        for key in ("base", "data", "out"):
            if getattr(args, key) is None:
                raise InputError(f"--{key} is required (or use --self-check / --check-forward)")
        report = train(args)
        print(json.dumps(report))
        return 0
    except InputError as e:
        log(f"error: {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
