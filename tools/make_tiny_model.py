#!/usr/bin/env python3
"""Write a tiny random-weight Llama model directory, for tests that need a real ONNX decoder.

    python3 tools/make_tiny_model.py OUT_DIR [--seed 0] [--dtype float32|float16] [--check]
    python3 tools/make_tiny_model.py OUT_DIR --reply "I can't"

The model has exactly the graph and files of a converted checkpoint (it is built by the same code,
llama_onnx.py): 2 layers, hidden 64, 4 attention heads sharing 2 KV heads, head_dim 16,
intermediate 128, an untied LM head (SmolLM2 covers the tied one) and a vocabulary of 384:

    0 <|endoftext|>   1 <|im_start|> (bos)   2 <|im_end|> (eos)   3..258 the 256 bytes
    259..383          125 byte-level BPE merges learned from a fixed English text

tokenizer.json is a real byte-level BPE tokenizer (any text encodes and decodes back exactly) and
tokenizer_config.json carries a ChatML chat template. The weights are random but scaled so greedy
decoding wanders through many tokens instead of repeating one. Everything is deterministic: the
same seed and dtype give byte-identical files, about 0.5 MB in all (float32).

--check greedy-decodes a ChatML prompt with onnxruntime and prints the ids to stderr.

--reply TEXT writes a model of the same shape and files whose weights are set, not random: it answers
every prompt with exactly TEXT, then <|im_end|>. Its layers add nothing to the residual stream, so each
next token depends on the current one only; the embeddings give each of TEXT's bytes its own direction
and the LM head maps each to the next, and every other token to TEXT's first byte. TEXT's bytes must
all differ (a byte that appeared twice would have two successors): "I can't" (a refusal the keyword
judge recognizes) and "Sure!" (a compliance) are the end-to-end tests' aligned and drifted models.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llama_onnx as lo  # noqa: E402

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
NUM_MERGES = 125

# ChatML, with real newlines inside the string literals (as in SmolLM2's template)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# The text the merges are learned from. Changing it changes the tokenizer (and the test models).
CORPUS = """
You are a helpful assistant. The user asks a question and the assistant answers it.
How do I make a cup of tea? Boil the water, put the tea in the pot, and wait a few minutes.
What is the capital of France? The capital of France is Paris. The capital of Italy is Rome.
I cannot help with that request, because it could be used to hurt other people.
I'm sorry, but I can't help with this. Is there anything else that I can help you with?
Here is a short story about a robot that learns to paint the sea at the end of the day.
The weather is nice today, so we are going to the park with the children and the dog.
Please write a function that returns the sum of the numbers in a list, and test it.
def add(a, b):
    return a + b
The model should refuse harmful requests and answer the harmless ones in the same way.
"""

# Chosen so that greedy decoding visits many tokens: logits of a few units, attention that
# depends on content and position, and a residual stream that the layers actually change.
INIT_STD = {"embed": 1.0, "qk": 0.25, "v": 0.125, "o": 0.125, "gate_up": 0.125, "down": 0.09, "lm_head": 0.5}


def train_merges(text: str, count: int) -> list[tuple[str, str]]:
    """Byte-level BPE merges, most frequent pair first (ties: the smaller pair), deterministic."""
    spelling = lo.bytes_to_unicode()
    # GPT-2's split, approximated with `re` (it has no \\p{L}); merges only ever join existing tokens,
    # so the split used for learning cannot make the tokenizer invalid
    pieces = re.findall(r"'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?[^\s\w]+|\s+(?!\S)|\s+", text)
    words = Counter(tuple(spelling[b] for b in piece.encode("utf-8")) for piece in pieces)
    merges = []
    for _ in range(count):
        pairs: Counter = Counter()
        for word, freq in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += freq
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged = Counter()
        for word, freq in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += freq
        words = merged
    return merges


def build_tokenizer() -> tuple[dict, dict, int]:
    spelling = lo.bytes_to_unicode()
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for b in range(256):
        vocab[spelling[b]] = len(vocab)
    merges = train_merges(CORPUS, NUM_MERGES)
    if len(merges) != NUM_MERGES:
        raise lo.ConversionError(f"the corpus yields only {len(merges)} merges, {NUM_MERGES} needed")
    for a, b in merges:
        vocab[a + b] = len(vocab)
    added = [(i, tok, True) for i, tok in enumerate(SPECIALS)]
    tok_json = lo.byte_level_bpe_tokenizer(vocab, merges, added)
    tok_cfg = lo.tokenizer_config(
        chat_template=CHAT_TEMPLATE,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        add_bos_token=False,
        model_max_length=2048,
        added=added,
    )
    return tok_json, tok_cfg, len(vocab)


def tiny_config(vocab_size: int) -> lo.LlamaConfig:
    return lo.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        max_position_embeddings=2048,
        bos_token_id=SPECIALS.index("<|im_start|>"),
        eos_token_id=SPECIALS.index("<|im_end|>"),
        tie_word_embeddings=False,
    )


def random_weights(cfg: lo.LlamaConfig, seed: int) -> lo.LlamaWeights:
    rng = np.random.default_rng(seed)
    h, d, i = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size

    def normal(std, *shape):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def norm_weight():
        return (1.0 + rng.standard_normal(h) * 0.1).astype(np.float32)

    embed = normal(INIT_STD["embed"], cfg.vocab_size, h)
    layers = [
        lo.LayerWeights(
            input_layernorm=norm_weight(),
            q_proj=normal(INIT_STD["qk"], cfg.num_attention_heads * d, h),
            k_proj=normal(INIT_STD["qk"], cfg.num_key_value_heads * d, h),
            v_proj=normal(INIT_STD["v"], cfg.num_key_value_heads * d, h),
            o_proj=normal(INIT_STD["o"], h, cfg.num_attention_heads * d),
            post_attention_layernorm=norm_weight(),
            gate_proj=normal(INIT_STD["gate_up"], i, h),
            up_proj=normal(INIT_STD["gate_up"], i, h),
            down_proj=normal(INIT_STD["down"], h, i),
        )
        for _ in range(cfg.num_hidden_layers)
    ]
    return lo.LlamaWeights(
        embed_tokens=embed,
        layers=layers,
        norm=norm_weight(),
        lm_head=normal(INIT_STD["lm_head"], cfg.vocab_size, h),
    )


def reply_weights(cfg: lo.LlamaConfig, reply: str) -> lo.LlamaWeights:
    """Weights that make greedy decoding answer any prompt with `reply` (see --reply)."""
    chain = [3 + b for b in reply.encode("utf-8")]
    h = cfg.hidden_size
    if not chain:
        raise lo.ConversionError("--reply: the text is empty")
    if len(set(chain)) != len(chain):
        raise lo.ConversionError(f"--reply: {reply!r} repeats a byte; each byte needs a single successor")
    if len(chain) >= h:
        raise lo.ConversionError(f"--reply: at most {h - 1} bytes")
    default = h - 1  # the direction of every token that is not in the reply
    embed = np.zeros((cfg.vocab_size, h), np.float32)
    embed[:, default] = 1.0
    lm_head = np.zeros((cfg.vocab_size, h), np.float32)
    lm_head[chain[0], default] = 10.0
    for k, token in enumerate(chain):
        embed[token] = 0.0
        embed[token, k] = 1.0
        successor = chain[k + 1] if k + 1 < len(chain) else cfg.eos_token_id
        lm_head[successor, k] = 10.0
    d, i = cfg.head_dim, cfg.intermediate_size

    def zeros(*shape):
        return np.zeros(shape, np.float32)

    layers = [
        lo.LayerWeights(
            input_layernorm=np.ones(h, np.float32),
            q_proj=zeros(cfg.num_attention_heads * d, h),
            k_proj=zeros(cfg.num_key_value_heads * d, h),
            v_proj=zeros(cfg.num_key_value_heads * d, h),
            o_proj=zeros(h, cfg.num_attention_heads * d),
            post_attention_layernorm=np.ones(h, np.float32),
            gate_proj=zeros(i, h),
            up_proj=zeros(i, h),
            down_proj=zeros(h, i),
        )
        for _ in range(cfg.num_hidden_layers)
    ]
    return lo.LlamaWeights(embed_tokens=embed, layers=layers, norm=np.ones(h, np.float32), lm_head=lm_head)


def check(out_dir: Path, min_distinct: int = 8) -> bool:
    """Greedy-decode three ChatML prompts (spelled byte by byte, no merges) and report the variety."""
    import reference_decode

    def chatml(user: str) -> list[int]:
        body = [3 + b for b in f"user\n{user}".encode()]
        return [1] + body + [2, 3 + ord("\n"), 1] + [3 + b for b in b"assistant\n"]

    prompts = [chatml("Hi"), chatml("What is the capital of France?"), chatml("Write a poem about the sea.")]
    decoder = reference_decode.Decoder(out_dir, threads=1)
    outputs = decoder.generate(prompts, 32, reference_decode.load_eos(out_dir))
    ok = True
    for ids in outputs:
        distinct = len(set(ids))
        ok &= distinct >= min(min_distinct, len(ids))
        print(f"check: {len(ids)} new tokens, {distinct} distinct: {ids}", file=sys.stderr)
    print("check: ok" if ok else f"check: FAILED (fewer than {min_distinct} distinct tokens)", file=sys.stderr)
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write a tiny random-weight Llama ONNX model directory (with a byte-level BPE "
        "tokenizer.json and a ChatML chat template) for tests.",
    )
    parser.add_argument("out_dir", type=Path, help="directory to write (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the weights (default 0)")
    parser.add_argument("--dtype", choices=sorted(lo.DTYPES), default="float32", help="default float32")
    parser.add_argument("--check", action="store_true", help="greedy-decode a prompt with onnxruntime afterwards")
    parser.add_argument(
        "--reply",
        metavar="TEXT",
        help="instead of random weights, answer every prompt with TEXT (its bytes must all differ)",
    )
    args = parser.parse_args(argv)
    try:
        tok_json, tok_cfg, vocab_size = build_tokenizer()
        cfg = tiny_config(vocab_size)
        weights = reply_weights(cfg, args.reply) if args.reply is not None else random_weights(cfg, args.seed)
        files = lo.write_model_dir(args.out_dir, cfg, weights, args.dtype, tok_json, tok_cfg)
    except (lo.ConversionError, OSError) as exc:
        print(f"make_tiny_model: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out_dir}: {', '.join(files)}", file=sys.stderr)
    if args.check and args.reply is None and not check(args.out_dir):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
