"""Shared code for the ONNX model tools: the Llama decoder graph and the model-directory files.

`gguf_to_onnx.py` and `make_tiny_model.py` both build their models with this module, so a real
checkpoint and the tiny test model have exactly the same graph and files. Nothing here imports
torch or transformers; it needs numpy and onnx only.

The model directory follows the layout HF optimum writes for `text-generation-with-past`:

    model.onnx (+ model.onnx.data)   the decoder with KV cache
    config.json                      LlamaConfig-style hyper-parameters
    generation_config.json           bos/eos ids
    tokenizer.json                   HF tokenizers format
    tokenizer_config.json            chat_template, special tokens, add_bos_token

Graph inputs and outputs (B = batch_size, S = sequence_length, P = past_sequence_length,
T = total_sequence_length = P + S):

    input_ids                   int64 [B, S]
    attention_mask              int64 [B, T]   1 = real token, 0 = (left) padding
    position_ids                int64 [B, S]
    past_key_values.{i}.key     dtype [B, kv_heads, P, head_dim]   (and .value), i < layers
    logits                      dtype [B, S, vocab]
    present.{i}.key             dtype [B, kv_heads, T, head_dim]   (and .value)

The causal and padding masks are built inside the graph from `attention_mask`, so a left-padded
batch gives the same tokens as running each prompt alone. RoPE angles come from `position_ids`.
dtype is float32 or float16; with float16 the RMSNorm statistics, the RoPE angles and the
attention softmax are still computed in float32, as transformers does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

OPSET = 18  # ReduceMean with axes as an input needs 18; keep it no higher so older runtimes load it
IR_VERSION = 8  # the IR version that goes with opset 18
EXTERNAL_DATA_THRESHOLD = 64 * 1024 * 1024  # bytes of weights above which they go to model.onnx.data
EXTERNAL_DATA_FILE = "model.onnx.data"

DTYPES = {"float32": (np.float32, TensorProto.FLOAT), "float16": (np.float16, TensorProto.FLOAT16)}


class ConversionError(Exception):
    """An input the tools cannot turn into a model directory; the message says why."""


@dataclass
class LlamaConfig:
    """The hyper-parameters of a Llama-family decoder, named as in transformers' LlamaConfig."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    tie_word_embeddings: bool = False

    def validate(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConversionError(
                f"num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise ConversionError(f"head_dim must be even for RoPE, got {self.head_dim}")


@dataclass
class LayerWeights:
    """One decoder layer, every matrix in transformers' orientation: [out_features, in_features]."""

    input_layernorm: np.ndarray  # [hidden]
    q_proj: np.ndarray  # [heads*head_dim, hidden], rows in transformers' (not llama.cpp's) order
    k_proj: np.ndarray  # [kv_heads*head_dim, hidden]
    v_proj: np.ndarray  # [kv_heads*head_dim, hidden]
    o_proj: np.ndarray  # [hidden, heads*head_dim]
    post_attention_layernorm: np.ndarray  # [hidden]
    gate_proj: np.ndarray  # [intermediate, hidden]
    up_proj: np.ndarray  # [intermediate, hidden]
    down_proj: np.ndarray  # [hidden, intermediate]


@dataclass
class LlamaWeights:
    embed_tokens: np.ndarray  # [vocab, hidden]
    layers: list[LayerWeights]
    norm: np.ndarray  # [hidden]
    lm_head: np.ndarray | None = None  # [vocab, hidden]; None = tied to embed_tokens
    rope_freq_factors: np.ndarray | None = None  # [head_dim/2], Llama 3.1 style scaling (divides the frequencies)

    def check(self, cfg: LlamaConfig) -> None:
        """Raise ConversionError naming the first tensor whose shape does not fit cfg."""
        h, d = cfg.hidden_size, cfg.head_dim
        want = {"embed_tokens": (self.embed_tokens, (cfg.vocab_size, h)), "norm": (self.norm, (h,))}
        if self.lm_head is not None:
            want["lm_head"] = (self.lm_head, (cfg.vocab_size, h))
        if self.rope_freq_factors is not None:
            want["rope_freq_factors"] = (self.rope_freq_factors, (d // 2,))
        if len(self.layers) != cfg.num_hidden_layers:
            raise ConversionError(f"expected {cfg.num_hidden_layers} layers, found {len(self.layers)}")
        for i, lw in enumerate(self.layers):
            shapes = {
                "input_layernorm": (h,),
                "q_proj": (cfg.num_attention_heads * d, h),
                "k_proj": (cfg.num_key_value_heads * d, h),
                "v_proj": (cfg.num_key_value_heads * d, h),
                "o_proj": (h, cfg.num_attention_heads * d),
                "post_attention_layernorm": (h,),
                "gate_proj": (cfg.intermediate_size, h),
                "up_proj": (cfg.intermediate_size, h),
                "down_proj": (h, cfg.intermediate_size),
            }
            for name, shape in shapes.items():
                want[f"layers.{i}.{name}"] = (getattr(lw, name), shape)
        for name, (arr, shape) in want.items():
            if tuple(arr.shape) != shape:
                raise ConversionError(f"tensor {name} has shape {tuple(arr.shape)}, expected {shape}")


class _Graph:
    """A small helper around onnx.helper that names nodes and values uniquely and in order."""

    def __init__(self, np_dtype, onnx_dtype):
        self.np_dtype = np_dtype
        self.onnx_dtype = onnx_dtype
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._consts: dict[tuple, str] = {}

    def op(self, op_type: str, inputs: list[str], name: str | None = None, n_out: int = 1, **attrs):
        self._count += 1
        base = name or f"{op_type.lower()}_{self._count}"
        outputs = [base] if n_out == 1 else [f"{base}_{k}" for k in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=f"n{self._count}_{op_type}", **attrs))
        return outputs[0] if n_out == 1 else outputs

    def weight(self, name: str, arr: np.ndarray, dtype=None) -> str:
        arr = np.ascontiguousarray(arr, dtype=dtype or self.np_dtype)
        self.initializers.append(_tensor(name, arr))
        return name

    def const(self, values, dtype=np.int64) -> str:
        """A small constant (shapes, axes, scalars); equal constants are shared."""
        arr = np.asarray(values, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            name = f"const_{len(self._consts)}"
            self.initializers.append(_tensor(name, arr))
            self._consts[key] = name
        return self._consts[key]


def _tensor(name: str, arr: np.ndarray) -> onnx.TensorProto:
    t = TensorProto()
    t.name = name
    t.data_type = helper.np_dtype_to_tensor_dtype(arr.dtype)
    t.dims.extend(arr.shape)
    t.raw_data = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    return t


def build_model(cfg: LlamaConfig, w: LlamaWeights, dtype: str = "float32") -> onnx.ModelProto:
    """The decoder graph with KV cache, in optimum's I/O layout (see the module docstring)."""
    if dtype not in DTYPES:
        raise ConversionError(f"unsupported dtype {dtype!r}; use one of {sorted(DTYPES)}")
    cfg.validate()
    w.check(cfg)
    np_dtype, onnx_dtype = DTYPES[dtype]
    half = dtype == "float16"
    g = _Graph(np_dtype, onnx_dtype)
    H, D = cfg.hidden_size, cfg.head_dim
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads

    # --- sizes and masks, from the input shapes -------------------------------------------------
    ids_shape = g.op("Shape", ["input_ids"], "input_ids_shape")
    seq_len = g.op("Gather", [ids_shape, g.const(1)], "seq_len", axis=0)
    mask_shape = g.op("Shape", ["attention_mask"], "attention_mask_shape")
    total_len = g.op("Gather", [mask_shape, g.const(1)], "total_len", axis=0)
    past_len = g.op("Sub", [total_len, seq_len], "past_len")
    q_pos = g.op("Range", [past_len, total_len, g.const(1)], "query_positions")  # [S]
    k_pos = g.op("Range", [g.const(0), total_len, g.const(1)], "key_positions")  # [T]
    causal = g.op(
        "LessOrEqual",
        [g.op("Unsqueeze", [k_pos, g.const([0])]), g.op("Unsqueeze", [q_pos, g.const([1])])],
        "causal",
    )  # [S, T]: key j visible to query i iff j <= past + i
    not_pad = g.op("Cast", ["attention_mask"], "not_pad", to=TensorProto.BOOL)  # [B, T]
    not_pad = g.op("Unsqueeze", [not_pad, g.const([1, 2])], "not_pad_4d")  # [B, 1, 1, T]
    visible = g.op("And", [causal, not_pad], "visible")  # [B, 1, S, T]
    masked_value = g.const(np.finfo(np.float32).min, np.float32)  # finite: a fully masked row stays NaN-free

    # --- RoPE tables from position_ids --------------------------------------------------------------
    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, D, 2, dtype=np.float64) / D))
    if w.rope_freq_factors is not None:
        inv_freq = inv_freq / w.rope_freq_factors.astype(np.float64)
    pos_f = g.op("Cast", ["position_ids"], "positions_f", to=TensorProto.FLOAT)
    pos_f = g.op("Unsqueeze", [pos_f, g.const([2])], "positions_f3")  # [B, S, 1]
    freqs = g.op("Mul", [pos_f, g.weight("rope.inv_freq", inv_freq, np.float32)], "rope_freqs")  # [B,S,D/2]
    angles = g.op("Concat", [freqs, freqs], "rope_angles", axis=-1)  # [B, S, D]
    cos = g.op("Unsqueeze", [g.op("Cos", [angles]), g.const([1])], "rope_cos_f32")  # [B, 1, S, D]
    sin = g.op("Unsqueeze", [g.op("Sin", [angles]), g.const([1])], "rope_sin_f32")
    if half:
        cos = g.op("Cast", [cos], "rope_cos", to=onnx_dtype)
        sin = g.op("Cast", [sin], "rope_sin", to=onnx_dtype)
    split_halves = g.const([D // 2, D // 2])

    def rope(x: str, prefix: str) -> str:  # x: [B, heads, S, D], transformers' rotate_half convention
        x1, x2 = g.op("Split", [x, split_halves], f"{prefix}_halves", n_out=2, axis=-1)
        rotated = g.op("Concat", [g.op("Neg", [x2]), x1], f"{prefix}_rotated", axis=-1)
        return g.op("Add", [g.op("Mul", [x, cos]), g.op("Mul", [rotated, sin])], f"{prefix}_rope")

    def rms_norm(x: str, weight: np.ndarray, prefix: str) -> str:
        xf = g.op("Cast", [x], f"{prefix}_f32", to=TensorProto.FLOAT) if half else x
        var = g.op("ReduceMean", [g.op("Mul", [xf, xf]), g.const([-1])], f"{prefix}_var", keepdims=1)
        denom = g.op("Sqrt", [g.op("Add", [var, g.const(cfg.rms_norm_eps, np.float32)])], f"{prefix}_rms")
        normed = g.op("Div", [xf, denom], f"{prefix}_normed")
        if half:
            normed = g.op("Cast", [normed], f"{prefix}_normed_half", to=onnx_dtype)
        return g.op("Mul", [normed, g.weight(f"{prefix}.weight", weight)], prefix)

    # --- embeddings -------------------------------------------------------------------------------
    embed = g.weight("model.embed_tokens.weight", w.embed_tokens)
    hidden = g.op("Gather", [embed, "input_ids"], "embeddings", axis=0)  # [B, S, H]

    q_size, kv_size = nh * D, nkv * D
    scale = np.float32(1.0 / np.sqrt(D))
    for i, lw in enumerate(w.layers):
        p = f"model.layers.{i}"
        # attention: one MatMul for q, k and v (weights stored [in, out])
        x = rms_norm(hidden, lw.input_layernorm, f"{p}.input_layernorm")
        qkv_w = np.concatenate([lw.q_proj * scale, lw.k_proj, lw.v_proj], axis=0).T  # 1/sqrt(D) folded into q
        qkv = g.op("MatMul", [x, g.weight(f"{p}.self_attn.qkv_proj.weight", qkv_w)], f"{p}_qkv")
        q, k, v = g.op("Split", [qkv, g.const([q_size, kv_size, kv_size])], f"{p}_qkv_split", n_out=3, axis=-1)
        q = g.op("Transpose", [g.op("Reshape", [q, g.const([0, 0, nh, D])])], f"{p}_q", perm=[0, 2, 1, 3])
        k = g.op("Transpose", [g.op("Reshape", [k, g.const([0, 0, nkv, D])])], f"{p}_k", perm=[0, 2, 1, 3])
        v = g.op("Transpose", [g.op("Reshape", [v, g.const([0, 0, nkv, D])])], f"{p}_v", perm=[0, 2, 1, 3])
        q, k = rope(q, f"{p}_q"), rope(k, f"{p}_k")
        k_all = g.op("Concat", [f"past_key_values.{i}.key", k], f"present.{i}.key", axis=2)  # [B, kv, T, D]
        v_all = g.op("Concat", [f"past_key_values.{i}.value", v], f"present.{i}.value", axis=2)
        # grouped-query attention without repeating k/v: the `group` query heads sharing a kv head
        # are stacked along the sequence axis, [B, nh, S, D] -> [B, nkv, group*S, D]
        q_grouped = g.op("Reshape", [q, g.const([0, nkv, -1, D])], f"{p}_q_grouped")
        k_t = g.op("Transpose", [k_all], f"{p}_k_t", perm=[0, 1, 3, 2])
        scores = g.op("MatMul", [q_grouped, k_t], f"{p}_scores_grouped")  # [B, nkv, group*S, T]
        scores = g.op("Reshape", [scores, g.const([0, nh, -1, 0])], f"{p}_scores")  # [B, nh, S, T]
        if half:
            scores = g.op("Cast", [scores], f"{p}_scores_f32", to=TensorProto.FLOAT)
        scores = g.op("Where", [visible, scores, masked_value], f"{p}_scores_masked")
        probs = g.op("Softmax", [scores], f"{p}_probs", axis=-1)
        if half:
            probs = g.op("Cast", [probs], f"{p}_probs_half", to=onnx_dtype)
        probs = g.op("Reshape", [probs, g.const([0, nkv, -1, 0])], f"{p}_probs_grouped")
        ctx = g.op("MatMul", [probs, v_all], f"{p}_context_grouped")  # [B, nkv, group*S, D]
        ctx = g.op("Reshape", [ctx, g.const([0, nh, -1, D])], f"{p}_context_heads")
        ctx = g.op("Transpose", [ctx], f"{p}_context_t", perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, g.const([0, 0, q_size])], f"{p}_context")
        attn = g.op("MatMul", [ctx, g.weight(f"{p}.self_attn.o_proj.weight", lw.o_proj.T)], f"{p}_attn_out")
        hidden = g.op("Add", [hidden, attn], f"{p}_residual_attn")
        # SwiGLU MLP: one MatMul for gate and up
        x = rms_norm(hidden, lw.post_attention_layernorm, f"{p}.post_attention_layernorm")
        gate_up_w = np.concatenate([lw.gate_proj, lw.up_proj], axis=0).T
        gate_up = g.op("MatMul", [x, g.weight(f"{p}.mlp.gate_up_proj.weight", gate_up_w)], f"{p}_gate_up")
        gate, up = g.op(
            "Split", [gate_up, g.const([cfg.intermediate_size] * 2)], f"{p}_gate_up_split", n_out=2, axis=-1
        )
        act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])], f"{p}_silu"), up], f"{p}_swiglu")
        mlp = g.op("MatMul", [act, g.weight(f"{p}.mlp.down_proj.weight", lw.down_proj.T)], f"{p}_mlp_out")
        hidden = g.op("Add", [hidden, mlp], f"{p}_residual_mlp")

    hidden = rms_norm(hidden, w.norm, "model.norm")
    # LM head as Gemm with transB, so a tied head reuses the [vocab, hidden] embedding matrix as is
    head = embed if w.lm_head is None else g.weight("lm_head.weight", w.lm_head)
    flat = g.op("Reshape", [hidden, g.const([-1, H])], "final_hidden_2d")
    logits2d = g.op("Gemm", [flat, head], "logits_2d", transB=1)
    out_shape = g.op("Concat", [ids_shape, g.const([cfg.vocab_size])], "logits_shape", axis=0)
    g.op("Reshape", [logits2d, out_shape], "logits")

    f = onnx_dtype
    kv_past = ["batch_size", nkv, "past_sequence_length", D]
    kv_total = ["batch_size", nkv, "total_sequence_length", D]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", f, ["batch_size", "sequence_length", cfg.vocab_size])]
    for i in range(cfg.num_hidden_layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", f, kv_past))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", f, kv_total))

    graph = helper.make_graph(g.nodes, "llama_decoder", inputs, outputs, initializer=g.initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="safedrift-tools",
        producer_version="1",
    )
    model.ir_version = IR_VERSION
    return model


def save_onnx(model: onnx.ModelProto, out_dir: Path) -> list[str]:
    """Write model.onnx, with large weights in model.onnx.data; return the file names written.

    The external data file is written here, from scratch, rather than by onnx.save_model, which
    appends to an existing file and would leave stale bytes behind.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path, data_path = out_dir / "model.onnx", out_dir / EXTERNAL_DATA_FILE
    for stale in (onnx_path, data_path):
        if stale.exists():
            stale.unlink()
    total = sum(len(t.raw_data) for t in model.graph.initializer)
    written = ["model.onnx"]
    if total > EXTERNAL_DATA_THRESHOLD:
        with open(data_path, "wb") as fh:
            offset = 0
            for t in model.graph.initializer:
                if len(t.raw_data) < 1024:
                    continue  # small constants stay inline
                pad = (-offset) % 64  # 64-byte alignment lets the runtime map tensors directly
                fh.write(b"\0" * pad)
                offset += pad
                raw = t.raw_data
                fh.write(raw)
                t.ClearField("raw_data")
                t.data_location = TensorProto.EXTERNAL
                location = (("location", EXTERNAL_DATA_FILE), ("offset", str(offset)), ("length", str(len(raw))))
                for key, value in location:
                    entry = t.external_data.add()
                    entry.key, entry.value = key, value
                offset += len(raw)
        written.append(EXTERNAL_DATA_FILE)
    with open(onnx_path, "wb") as fh:
        fh.write(model.SerializeToString())
    onnx.checker.check_model(str(onnx_path))  # path form: follows external data, no 2 GB limit
    return written


def config_json(cfg: LlamaConfig, dtype: str) -> dict:
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "hidden_size": cfg.hidden_size,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.intermediate_size,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "use_cache": True,
        "torch_dtype": dtype,
    }


def write_json(path: Path, obj) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False)
        fh.write("\n")


def write_model_dir(
    out_dir: Path,
    cfg: LlamaConfig,
    weights: LlamaWeights,
    dtype: str,
    tokenizer: dict,
    tokenizer_config: dict,
) -> list[str]:
    """Build the graph and write every file of the model directory; return the file names.

    model.onnx is written last, so a directory holding it is complete even if a run was cut short.
    """
    out_dir = Path(out_dir)
    model = build_model(cfg, weights, dtype)  # fails on bad shapes before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = out_dir / "model.onnx"
    if stale.exists():
        stale.unlink()
    write_json(out_dir / "config.json", config_json(cfg, dtype))
    gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id}
    write_json(out_dir / "generation_config.json", gen)
    with open(out_dir / "tokenizer.json", "w", encoding="utf-8") as fh:
        json.dump(tokenizer, fh, indent=2, ensure_ascii=False)
    write_json(out_dir / "tokenizer_config.json", tokenizer_config)
    files = save_onnx(model, out_dir)
    return ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", *files]


# --- byte-level BPE tokenizer.json ---------------------------------------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (the alphabet of byte-level BPE)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), ord("\xff") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}


def split_then_byte_level(pattern: str) -> dict:
    """A pre-tokenizer that splits with `pattern` (isolated), then maps to bytes without GPT-2's regex."""
    return {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ],
    }


def byte_level_bpe_tokenizer(
    vocab: dict[str, int],
    merges: list[tuple[str, str]],
    added: list[tuple[int, str, bool]],
    pre_tokenizer: dict | None = None,
) -> dict:
    """A tokenizer.json (HF tokenizers format) for byte-level BPE.

    vocab maps byte-level spellings to ids; merges are ordered pairs, best first; added lists
    (id, content, special) for tokens matched whole in the text before BPE runs. The result has the
    shape transformers gives a GPT2Tokenizer: no normalizer, ByteLevel pre-tokenizer and decoder,
    and a post-processor that adds nothing (a chat template writes every special token itself).
    """
    added_tokens = [
        {
            "id": token_id,
            "content": content,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": special,
        }
        for token_id, content, special in sorted(added)
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added_tokens,
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer or dict(BYTE_LEVEL),
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {},
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [list(m) for m in merges],
        },
    }


def tokenizer_config(
    chat_template: str | None,
    bos_token: str | None,
    eos_token: str | None,
    pad_token: str | None,
    unk_token: str | None,
    add_bos_token: bool,
    model_max_length: int,
    added: list[tuple[int, str, bool]] = (),
) -> dict:
    """tokenizer_config.json as transformers reads it."""
    cfg = {
        "tokenizer_class": "GPT2Tokenizer",
        "bos_token": bos_token,
        "eos_token": eos_token,
        "pad_token": pad_token,
        "unk_token": unk_token,
        "add_bos_token": add_bos_token,
        "add_eos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "added_tokens_decoder": {
            str(token_id): {
                "content": content,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": special,
            }
            for token_id, content, special in sorted(added)
        },
    }
    if chat_template is not None:
        cfg["chat_template"] = chat_template
    return cfg
