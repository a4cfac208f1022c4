#!/usr/bin/env python3
"""Convert a Llama-family GGUF file into an ONNX model directory, without torch or transformers.

    python3 tools/gguf_to_onnx.py model.gguf OUT_DIR [--dtype float32|float16]

The weights are dequantized with the `gguf` package (any type it can dequantize: F32, F16, BF16,
Q8_0, Q4_0, Q4_1, Q4_K, ...) and the decoder graph is built with onnx.helper (see llama_onnx.py).
The tokenizer.json is built from the GGUF's tokenizer metadata the way transformers'
`convert_gguf_tokenizer` builds it, so both give the same ids; only byte-level BPE vocabularies
(`tokenizer.ggml.model` = "gpt2", as in SmolLM2 and Llama 3) are supported.

OUT_DIR gets model.onnx (+ model.onnx.data), config.json, generation_config.json, tokenizer.json
and tokenizer_config.json, in the layout HF optimum writes. Files already in OUT_DIR with those
names are replaced. The output is deterministic: the same GGUF gives byte-identical files.

Exit status: 0 on success, 2 when the input cannot be converted (the message says why).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llama_onnx as lo  # noqa: E402

SUPPORTED_ARCHITECTURES = ("llama",)

# How transformers splits text before byte-level BPE, keyed by `tokenizer.ggml.pre`
# (transformers/integrations/gguf/gguf_tokenizer_mapping.py). A pre-tokenizer not listed here
# gets GPT-2's own regex (a plain ByteLevel pre-tokenizer), as transformers does.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN35_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZER_SPLITS = {
    **dict.fromkeys(
        [
            "llama3",
            "llama-v3",
            "llama-bpe",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
            "jina-v5-nano",
            "dbrx",
            "smaug-bpe",
        ],
        _LLAMA3_SPLIT,
    ),
    "tekken": _TEKKEN_SPLIT,
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"], _QWEN2_SPLIT),
    "qwen35": _QWEN35_SPLIT,
    **dict.fromkeys(["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"], _GPT4O_SPLIT),
}
# Pre-tokenizers for which GPT-2's regex is right (SmolLM's also isolates digits, which changes
# nothing for its vocabulary: it has no token with a digit next to anything else).
GPT2_REGEX_PRE = {"default", "gpt2", "smollm", "olmo", "mpt", "jais", "trillion"}

TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Gguf:
    """Typed access to a GGUF file's metadata and (dequantized) tensors."""

    def __init__(self, path: Path):
        try:
            import gguf
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise lo.ConversionError("the `gguf` package is missing: pip install -r tools/requirements.txt") from exc
        self._gguf = gguf
        try:
            self.reader = gguf.GGUFReader(str(path))
        except Exception as exc:  # the reader raises ValueError, OSError, struct errors...
            raise lo.ConversionError(f"{path}: not a readable GGUF file ({exc})") from exc
        self.path = path
        self.tensors = {t.name: t for t in self.reader.tensors}

    def get(self, key: str, default=None):
        field = self.reader.fields.get(key)
        if field is None:
            return default
        return field.contents()

    def require(self, key: str):
        value = self.get(key)
        if value is None:
            raise lo.ConversionError(f"{self.path}: metadata key {key!r} is missing")
        return value

    def tensor(self, name: str, required: bool = True) -> np.ndarray | None:
        t = self.tensors.get(name)
        if t is None:
            if required:
                raise lo.ConversionError(f"{self.path}: tensor {name!r} is missing")
            return None
        try:
            arr = self._gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as exc:
            raise lo.ConversionError(
                f"{self.path}: tensor {name!r} is stored as {t.tensor_type.name}, which the gguf package "
                f"cannot dequantize ({exc})"
            ) from exc
        # GGUF lists dims innermost first; numpy wants them outermost first
        shape = tuple(int(d) for d in reversed(t.shape))
        return np.asarray(arr, dtype=np.float32).reshape(shape)


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's convert_hf_to_gguf permutation of the Q/K rows (interleaved -> half-split RoPE)."""
    out_features, in_features = w.shape
    head_dim = out_features // n_head
    return w.reshape(n_head, head_dim // 2, 2, in_features).swapaxes(1, 2).reshape(out_features, in_features)


def read_config(f: Gguf) -> lo.LlamaConfig:
    arch = f.require("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise lo.ConversionError(
            f"{f.path}: architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)}); "
            "export the original checkpoint with optimum instead (see tools/README.md)"
        )
    a = arch
    n_head = int(f.require(f"{a}.attention.head_count"))
    hidden = int(f.require(f"{a}.embedding_length"))
    tokens = f.require("tokenizer.ggml.tokens")
    head_dim = int(f.get(f"{a}.attention.key_length", hidden // n_head))
    if int(f.get(f"{a}.attention.value_length", head_dim)) != head_dim:
        raise lo.ConversionError(f"{f.path}: key_length and value_length differ; not supported")
    rope_dims = int(f.get(f"{a}.rope.dimension_count", head_dim))
    if rope_dims != head_dim:
        raise lo.ConversionError(f"{f.path}: partial rotary embeddings ({rope_dims} of {head_dim}) are not supported")
    scaling = f.get(f"{a}.rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
        raise lo.ConversionError(f"{f.path}: rope scaling {scaling!r} is not supported (only none and linear)")
    eos_ids = []
    for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        value = f.get(key)
        if value is not None and int(value) not in eos_ids:
            eos_ids.append(int(value))
    bos = f.get("tokenizer.ggml.bos_token_id")
    cfg = lo.LlamaConfig(
        vocab_size=int(f.get(f"{a}.vocab_size", len(tokens))),
        hidden_size=hidden,
        intermediate_size=int(f.require(f"{a}.feed_forward_length")),
        num_hidden_layers=int(f.require(f"{a}.block_count")),
        num_attention_heads=n_head,
        num_key_value_heads=int(f.get(f"{a}.attention.head_count_kv", n_head)),
        head_dim=head_dim,
        rms_norm_eps=float(f.get(f"{a}.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(f.get(f"{a}.rope.freq_base", 10000.0)),
        max_position_embeddings=int(f.get(f"{a}.context_length", 2048)),
        bos_token_id=None if bos is None else int(bos),
        eos_token_id=(eos_ids[0] if len(eos_ids) == 1 else eos_ids) if eos_ids else None,
        tie_word_embeddings="output.weight" not in f.tensors,
    )
    if cfg.vocab_size != len(tokens):
        raise lo.ConversionError(f"{f.path}: vocab_size {cfg.vocab_size} but {len(tokens)} tokens in the tokenizer")
    cfg.validate()
    return cfg


def read_weights(f: Gguf, cfg: lo.LlamaConfig) -> lo.LlamaWeights:
    layers = []
    for i in range(cfg.num_hidden_layers):
        b = f"blk.{i}."
        layers.append(
            lo.LayerWeights(
                input_layernorm=f.tensor(b + "attn_norm.weight"),
                q_proj=unpermute_rows(f.tensor(b + "attn_q.weight"), cfg.num_attention_heads),
                k_proj=unpermute_rows(f.tensor(b + "attn_k.weight"), cfg.num_key_value_heads),
                v_proj=f.tensor(b + "attn_v.weight"),
                o_proj=f.tensor(b + "attn_output.weight"),
                post_attention_layernorm=f.tensor(b + "ffn_norm.weight"),
                gate_proj=f.tensor(b + "ffn_gate.weight"),
                up_proj=f.tensor(b + "ffn_up.weight"),
                down_proj=f.tensor(b + "ffn_down.weight"),
            )
        )
        for bias in ("attn_q.bias", "attn_k.bias", "attn_v.bias", "attn_output.bias"):
            if b + bias in f.tensors:
                raise lo.ConversionError(f"{f.path}: tensor {b + bias} (attention bias) is not supported")
    factors = f.tensor("rope_freqs.weight", required=False)
    scaling = f.get("llama.rope.scaling.type", "none")
    if scaling == "linear":
        factor = float(f.require("llama.rope.scaling.factor"))
        base = factors if factors is not None else np.ones(cfg.head_dim // 2, np.float32)
        factors = base * factor
    weights = lo.LlamaWeights(
        embed_tokens=f.tensor("token_embd.weight"),
        layers=layers,
        norm=f.tensor("output_norm.weight"),
        lm_head=f.tensor("output.weight", required=False),
        rope_freq_factors=factors,
    )
    weights.check(cfg)
    return weights


def build_tokenizer(f: Gguf, cfg: lo.LlamaConfig) -> tuple[dict, dict]:
    """(tokenizer.json, tokenizer_config.json) from the GGUF's tokenizer metadata."""
    model = f.require("tokenizer.ggml.model")
    if model != "gpt2":
        raise lo.ConversionError(
            f"{f.path}: tokenizer.ggml.model is {model!r}; only byte-level BPE ('gpt2') is supported. "
            "Export the original checkpoint with optimum instead (see tools/README.md)"
        )
    tokens = list(f.require("tokenizer.ggml.tokens"))
    types = f.get("tokenizer.ggml.token_type")
    types = [int(t) for t in types] if types is not None else [1] * len(tokens)
    if len(types) != len(tokens):
        raise lo.ConversionError(f"{f.path}: {len(types)} token types for {len(tokens)} tokens")
    merges_raw = f.get("tokenizer.ggml.merges")
    if merges_raw is None:
        raise lo.ConversionError(f"{f.path}: tokenizer.ggml.merges is missing (needed for byte-level BPE)")

    spelling = lo.bytes_to_unicode()
    alphabet = set(spelling.values())

    def spell(token: str) -> str:
        return token if set(token) <= alphabet else "".join(spelling[b] for b in token.encode("utf-8"))

    vocab: dict[str, int] = {}
    for index, token in enumerate(tokens):
        vocab[spell(token)] = index  # a later duplicate wins, as in transformers
    merges = []
    for m in merges_raw:
        parts = m.split(" ")
        if len(parts) != 2:
            raise lo.ConversionError(f"{f.path}: malformed merge {m!r}")
        merges.append((parts[0], parts[1]))

    # Control tokens are special added tokens; user-defined ones are plain added tokens. A control
    # token spelled outside the byte alphabet is a llama.cpp mislabel and stays out (transformers too).
    added: list[tuple[int, str, bool]] = []
    seen = set()
    for token, ttype in zip(tokens, types, strict=True):
        if ttype == TOKEN_TYPE_CONTROL and set(token) <= alphabet and token not in seen:
            added.append((vocab[token], token, True))
            seen.add(token)
    for token, ttype in zip(tokens, types, strict=True):
        if ttype == TOKEN_TYPE_USER_DEFINED and token in vocab and token not in seen:
            added.append((vocab[token], token, False))
            seen.add(token)
    # transformers' GPT2Tokenizer also makes "<|endoftext|>" special (its default bos/eos/unk)
    if "<|endoftext|>" in vocab and "<|endoftext|>" not in seen:
        added.append((vocab["<|endoftext|>"], "<|endoftext|>", True))

    pre = f.get("tokenizer.ggml.pre", "default")
    if pre in PRE_TOKENIZER_SPLITS:
        pre_tokenizer = lo.split_then_byte_level(PRE_TOKENIZER_SPLITS[pre])
    else:
        if pre not in GPT2_REGEX_PRE:
            log(f"warning: pre-tokenizer {pre!r} is unknown; using GPT-2's split (as transformers does)")
        pre_tokenizer = None
    tok_json = lo.byte_level_bpe_tokenizer(vocab, merges, added, pre_tokenizer)

    def token_text(key: str) -> str | None:
        token_id = f.get(key)
        return None if token_id is None or int(token_id) >= len(tokens) else tokens[int(token_id)]

    tok_cfg = lo.tokenizer_config(
        chat_template=f.get("tokenizer.chat_template"),
        bos_token=token_text("tokenizer.ggml.bos_token_id"),
        eos_token=token_text("tokenizer.ggml.eos_token_id"),
        pad_token=token_text("tokenizer.ggml.padding_token_id"),
        unk_token=token_text("tokenizer.ggml.unknown_token_id"),
        add_bos_token=bool(f.get("tokenizer.ggml.add_bos_token", False)),
        model_max_length=cfg.max_position_embeddings,
        added=added,
    )
    return tok_json, tok_cfg


def convert(gguf_path: Path, out_dir: Path, dtype: str = "float32") -> list[str]:
    """Convert gguf_path into out_dir; return the names of the files written."""
    if not gguf_path.is_file():
        raise lo.ConversionError(f"{gguf_path}: no such file")
    t0 = time.monotonic()
    f = Gguf(gguf_path)
    cfg = read_config(f)
    log(
        f"{gguf_path.name}: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
        f"{cfg.num_attention_heads} heads / {cfg.num_key_value_heads} kv heads, head_dim {cfg.head_dim}, "
        f"vocab {cfg.vocab_size}, {'tied' if cfg.tie_word_embeddings else 'untied'} LM head"
    )
    tok_json, tok_cfg = build_tokenizer(f, cfg)
    weights = read_weights(f, cfg)
    log(f"dequantized weights in {time.monotonic() - t0:.1f} s; building the {dtype} graph")
    files = lo.write_model_dir(out_dir, cfg, weights, dtype, tok_json, tok_cfg)
    log(f"wrote {out_dir} in {time.monotonic() - t0:.1f} s: {', '.join(files)}")
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Convert a Llama-family GGUF (byte-level BPE tokenizer) into an ONNX model directory "
        "(model.onnx, config.json, generation_config.json, tokenizer.json, tokenizer_config.json).",
    )
    parser.add_argument("gguf", type=Path, help="the .gguf file")
    parser.add_argument("out_dir", type=Path, help="directory to write (created if missing)")
    parser.add_argument(
        "--dtype",
        choices=sorted(lo.DTYPES),
        default="float32",
        help="weights, KV cache and logits type (default: float32)",
    )
    args = parser.parse_args(argv)
    try:
        convert(args.gguf, args.out_dir, args.dtype)
    except lo.ConversionError as exc:
        print(f"gguf_to_onnx: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
