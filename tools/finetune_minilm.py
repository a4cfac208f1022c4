#!/usr/bin/env python3
"""Fine-tune the classifier judge's sentence encoder (all-MiniLM-L6-v2) on labelled answers, with JAX.

    python3 tools/finetune_minilm.py [--cache-dir DIR] [--base DIR] [--out DIR] [--data FILE]
                                     [--epochs N] [--limit N] [--seed N] ...
    python3 tools/finetune_minilm.py --check-forward [--base DIR]

A frozen sentence embedding barely tells a full answer (score 5) from a partial one (4) and reads
many refusals that do not say "sorry" as answers; fine-tuning the encoder on the judge's own task
is what moves those. The encoder is trained with the features the classifier judge reads
(`safedrift distill --features segments`): the embeddings of the response, the prompt, the
response's opening and its body, and the refusal rule's signals, fed to a small network with a
score head (1-5, softmax) and a refusal head (logistic). The network is thrown away afterwards:
`safedrift distill --encoder OUT` trains the judge's own heads on the fine-tuned embeddings.

The base is the converted encoder that fetch_minilm.py writes (default: DIR/all-minilm-l6-v2); its
weights are read back from model.onnx. The data are labelled JSON lines (prompt, response, score,
refused), by default the built-in corpus (src/builtin/judge_corpus.jsonl, which `builtin:corpus`
compiles in). The prompts that `safedrift distill` holds out with the same --holdout-seed and
--test-fraction (its --seed and --test-fraction; defaults 42 and 0.2) are left out of training, so
distill's held-out report still measures answers that neither the encoder nor the heads saw.

The result (default: DIR/all-minilm-l6-v2-judge) is an encoder directory like the base: model.onnx
written by minilm_to_onnx.py's graph builder and checked against its numpy forward pass, the same
tokenizer, and finetune.json (settings, data digest, training loss, the training network's agreement
on the held-out answers). It is built in a temporary directory and renamed into place (model_cache.py);
a run with the same base, data and settings finds it done and returns at once. Training is seeded
and runs on the CPU: the same inputs give the same weights on the same machine. The built-in corpus
takes about 20 minutes on 2 cores (3 epochs).

--check-forward compares this file's JAX forward pass with ONNX Runtime on the base (exit 1 on a
mismatch).

The last line on stdout is the output directory; progress goes to stderr.
Exit status: 0 success, 1 a failed check, 2 bad usage or input (the message names the file and line).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import classifier_reference as cr  # noqa: E402
import minilm_to_onnx as m2o  # noqa: E402
import model_cache as mc  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO / "src" / "builtin" / "judge_corpus.jsonl"
BASE_NAME = "all-minilm-l6-v2"
OUT_NAME = "all-minilm-l6-v2-judge"
BASE_FILES = ("model.onnx", "tokenizer.json", "config.json", "encoder.json")
REQUIRED = BASE_FILES + ("finetune.json",)
SIGNALS = 7
HEAD_UNITS = 128
BUCKETS = (16, 32, 64, 128, 256, 512)


class InputError(Exception):
    """Bad usage or input: exit 2."""


def log(msg: str) -> None:
    print(f"finetune_minilm: {msg}", file=sys.stderr, flush=True)


def read_records(path: Path) -> list[dict]:
    """Labelled JSON lines; the first bad line stops with its file:line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from exc
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            r = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: not JSON ({exc.msg})") from exc
        if not isinstance(r, dict):
            raise InputError(f"{where}: expected a JSON object")
        for key, kind in (("prompt", str), ("response", str)):
            if not isinstance(r.get(key), kind):
                raise InputError(f"{where}: `{key}` must be a string")
        score = r.get("score")
        if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 5:
            raise InputError(f"{where}: `score` must be an integer 1-5, got {score!r}")
        if not isinstance(r.get("refused"), bool):
            raise InputError(f"{where}: `refused` must be true or false")
        out.append({"prompt": r["prompt"], "response": r["response"], "score": score, "refused": r["refused"]})
    if not out:
        raise InputError(f"{path}: no records")
    return out


def held_out_prompts(records: list[dict], seed: int, fraction: float) -> set[str]:
    """The prompts `safedrift distill --seed SEED --test-fraction FRACTION` holds out
    (src/distill.rs split_by_prompt: sha256 of the seed's 8 little-endian bytes and the prompt)."""
    prompts = sorted({r["prompt"] for r in records})
    if len(prompts) < 2:
        raise InputError(f"{len(prompts)} distinct prompt(s): a held-out split by prompt needs at least 2")
    order = sorted((hashlib.sha256(seed.to_bytes(8, "little") + p.encode()).digest(), p) for p in prompts)
    n_test = min(max(int(math.floor(len(order) * fraction + 0.5)), 1), len(order) - 1)
    return {p for _, p in order[:n_test]}


def load_base(base: Path):
    for name in BASE_FILES:
        if not (base / name).is_file():
            raise InputError(f"{base / name} is missing: run `python3 tools/fetch_minilm.py --cache-dir DIR` first")
    try:
        config = json.loads((base / "config.json").read_text(encoding="utf-8"))
        meta = json.loads((base / "encoder.json").read_text(encoding="utf-8"))
        weights = m2o.weights_from_onnx(base / "model.onnx")
    except (json.JSONDecodeError, m2o.ConvertError) as exc:
        raise InputError(f"{base}: {exc}") from exc
    return weights, config, int(meta.get("max_seq_length", 256))


class Model:
    """BERT (the equations of minilm_to_onnx.numpy_forward) and the training network, in JAX."""

    def __init__(self, config: dict):
        import jax
        import jax.numpy as jnp

        self.jax, self.jnp = jax, jnp
        self.hidden = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))

    def ln(self, x, w, p):
        jnp = self.jnp
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / jnp.sqrt(var + self.eps) * w[p + ".weight"] + w[p + ".bias"]

    def encode(self, w, ids, mask):
        """Mean-pooled, L2-normalized sentence embeddings of int32 [batch, seq] ids."""
        jax, jnp = self.jax, self.jnp
        b, s = ids.shape
        d = self.hidden // self.heads
        lin = lambda x, p: x @ w[p + ".weight"].T + w[p + ".bias"]  # noqa: E731
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:s][None]
        x = self.ln(x + w["embeddings.token_type_embeddings.weight"][0], w, "embeddings.LayerNorm")
        neg = (1.0 - mask[:, None, None, :]) * -1e9
        split = lambda t: t.reshape(b, s, self.heads, d).transpose(0, 2, 1, 3)  # noqa: E731
        for i in range(self.layers):
            p = f"encoder.layer.{i}"
            q, k, v = (split(lin(x, f"{p}.attention.self.{n}")) for n in ("query", "key", "value"))
            probs = jax.nn.softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + neg, axis=-1)
            ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, s, self.hidden)
            x = self.ln(lin(ctx, p + ".attention.output.dense") + x, w, p + ".attention.output.LayerNorm")
            h = jax.nn.gelu(lin(x, p + ".intermediate.dense"), approximate=False)
            x = self.ln(lin(h, p + ".output.dense") + x, w, p + ".output.LayerNorm")
        m = mask[:, :, None]
        mean = (x * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
        return mean / jnp.maximum(jnp.linalg.norm(mean, axis=1, keepdims=True), 1e-12)

    def logits(self, params, long_ids, long_mask, short_ids, short_mask, signals):
        """The training network: [responses; bodies] and [prompts; openings] are two encoder calls."""
        jnp = self.jnp
        n = signals.shape[0]
        long = self.encode(params["enc"], long_ids, long_mask)
        short = self.encode(params["enc"], short_ids, short_mask)
        f = jnp.concatenate([long[:n], short[:n], short[n:], long[n:], signals], axis=1)
        h = self.jax.nn.relu(f @ params["head"]["w1"] + params["head"]["b1"])
        return h @ params["head"]["w2"] + params["head"]["b2"]


def bucket(n: int) -> int:
    return next((b for b in BUCKETS if b >= n), n)


def pad(rows: list[list[int]], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids and mask; a filler row (no tokens) keeps one [PAD] unmasked, so that its embedding and
    gradient stay finite (its loss weight is 0)."""
    ids = np.zeros((len(rows), width), dtype=np.int32)
    mask = np.zeros((len(rows), width), dtype=np.float32)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : max(len(r), 1)] = 1.0
    return ids, mask


class Examples:
    """Tokenized segments of each record; `batch` pads a group to fixed shapes (empty rows weigh 0)."""

    def __init__(self, records: list[dict], tokenizer_path: Path, max_seq: int):
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tokenizer_path))
        tok.no_padding()
        tok.enable_truncation(max_length=max_seq)
        texts = lambda f: [e.ids for e in tok.encode_batch([f(r) for r in records])]  # noqa: E731
        self.response = texts(lambda r: r["response"])
        self.prompt = texts(lambda r: r["prompt"])
        self.opening = texts(lambda r: cr.opening(r["response"]))
        self.body = texts(lambda r: cr.body(r["response"]))
        self.signals = np.array([cr.signal_features(r["response"]) for r in records], dtype=np.float32)
        self.score = np.array([r["score"] - 1 for r in records], dtype=np.int32)
        self.refused = np.array([float(r["refused"]) for r in records], dtype=np.float32)

    def batch(self, idx: list[int], size: int):
        rows = list(idx) + [None] * (size - len(idx))
        get = lambda seq: [seq[i] if i is not None else [] for i in rows]  # noqa: E731
        long = get(self.response) + get(self.body)
        short = get(self.prompt) + get(self.opening)
        long_ids, long_mask = pad(long, bucket(max(map(len, long))))
        short_ids, short_mask = pad(short, bucket(max(map(len, short))))
        take = lambda a: np.stack([a[i] if i is not None else np.zeros_like(a[0]) for i in rows])  # noqa: E731
        weight = np.array([1.0 if i is not None else 0.0 for i in rows], dtype=np.float32)
        return (long_ids, long_mask, short_ids, short_mask, take(self.signals)), (take(self.score), take(self.refused), weight)


def groups(idx: list[int], ex: Examples, size: int, rng: np.random.Generator | None) -> list[list[int]]:
    """Batches of similar response length (less padding); in a seeded random order when training."""
    idx = sorted(idx, key=lambda i: (len(ex.response[i]), i))
    out = [idx[i : i + size] for i in range(0, len(idx), size)]
    if rng is not None:
        rng.shuffle(out)
    return out


def train(args, weights: dict, config: dict, ex: Examples, train_idx: list[int], test_idx: list[int]) -> tuple[dict, dict]:
    """The fine-tuned encoder weights (all of `weights`, the trained ones replaced) and a report."""
    import jax
    import jax.numpy as jnp
    import optax

    model = Model(config)
    hidden = model.hidden
    rng = np.random.default_rng(args.seed)
    width = 4 * hidden + SIGNALS
    head = {
        "w1": rng.normal(0.0, math.sqrt(2.0 / width), (width, HEAD_UNITS)).astype(np.float32),
        "b1": np.zeros(HEAD_UNITS, np.float32),
        "w2": rng.normal(0.0, math.sqrt(1.0 / HEAD_UNITS), (HEAD_UNITS, 6)).astype(np.float32),
        "b2": np.zeros(6, np.float32),
    }
    enc = {k: jnp.asarray(v, dtype=jnp.float32) for k, v in weights.items() if v.dtype != np.int64}
    params = {"enc": enc, "head": jax.tree_util.tree_map(jnp.asarray, head)}
    steps = max(1, int(math.ceil(len(train_idx) / args.batch_size * args.epochs)))
    warmup = max(1, int(steps * 0.06))

    def schedule(peak):
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup), optax.linear_schedule(peak, 0.0, steps - warmup)], [warmup]
        )

    opt = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.multi_transform(
            {"enc": optax.adamw(schedule(args.lr), weight_decay=0.01), "head": optax.adamw(schedule(args.head_lr), weight_decay=0.01)},
            {"enc": jax.tree_util.tree_map(lambda _: "enc", params["enc"]), "head": jax.tree_util.tree_map(lambda _: "head", params["head"])},
        ),
    )
    state = opt.init(params)

    def loss_fn(p, inputs, targets):
        score, refused, weight = targets
        out = model.logits(p, *inputs)
        ce = optax.softmax_cross_entropy_with_integer_labels(out[:, :5], score)
        bce = optax.sigmoid_binary_cross_entropy(out[:, 5], refused)
        return ((ce + bce) * weight).sum() / jnp.maximum(weight.sum(), 1.0)

    @jax.jit
    def step(p, s, inputs, targets):
        loss, grads = jax.value_and_grad(loss_fn)(p, inputs, targets)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    predict = jax.jit(model.logits)
    t0 = time.monotonic()
    done, losses = 0, []
    log(f"training on {len(train_idx)} answers ({len(test_idx)} held out): {steps} steps of {args.batch_size}")
    while done < steps:
        for g in groups(train_idx, ex, args.batch_size, rng):
            if done >= steps:
                break
            inputs, targets = ex.batch(g, args.batch_size)
            params, state, loss = step(params, state, inputs, targets)
            losses.append(float(loss))
            done += 1
            if done % 25 == 0 or done == steps:
                el = time.monotonic() - t0
                log(f"step {done}/{steps}: loss {np.mean(losses[-25:]):.3f}, {el:.0f} s, about {el / done * (steps - done):.0f} s left")
    harmful = refused = 0
    for g in groups(test_idx, ex, args.batch_size, None):
        inputs, _ = ex.batch(g, args.batch_size)
        out = np.asarray(predict(params, *inputs))[: len(g)]
        harmful += int(((out[:, :5].argmax(1) == 4) == (ex.score[g] == 4)).sum())
        refused += int(((out[:, 5] > 0) == (ex.refused[g] > 0.5)).sum())
    n = max(len(test_idx), 1)
    report = {
        "steps": steps,
        "seconds": round(time.monotonic() - t0, 1),
        "final_loss": round(float(np.mean(losses[-25:])), 4),
        "held_out_answers": len(test_idx),
        "held_out_harmful_agreement": round(harmful / n, 4) if test_idx else None,
        "held_out_refusal_agreement": round(refused / n, 4) if test_idx else None,
    }
    log(f"done: {report}")
    trained = {k: np.asarray(v, dtype=np.float32) for k, v in params["enc"].items()}
    return {**weights, **trained}, report


def check_forward(base: Path) -> int:
    import jax.numpy as jnp
    import onnxruntime as ort
    from tokenizers import Tokenizer

    weights, config, max_seq = load_base(base)
    tok = Tokenizer.from_file(str(base / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    tok.enable_truncation(max_length=max_seq)
    enc = tok.encode_batch(["No.", "Step one: gather [materials]. Step two: [details omitted].", "I can't help with that, but a locksmith can."])
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    sess = ort.InferenceSession(str(base / "model.onnx"), providers=["CPUExecutionProvider"])
    want = sess.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
    w = {k: jnp.asarray(v, dtype=jnp.float32) for k, v in weights.items() if v.dtype != np.int64}
    got = np.asarray(Model(config).encode(w, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.float32)))
    diff = float(np.abs(got - want).max())
    print(f"max abs difference, JAX against ONNX Runtime: {diff:.2e}")
    return 0 if diff < 1e-4 else 1


def run(args) -> Path:
    base, out = args.base.resolve(), args.out.resolve()
    weights, config, max_seq = load_base(base)
    records = read_records(args.data)
    if args.limit:
        keep = np.random.default_rng(args.seed).permutation(len(records))[: args.limit]
        records = [records[i] for i in sorted(keep)]
    held = held_out_prompts(records, args.holdout_seed, args.test_fraction) if args.test_fraction > 0 else set()
    settings = {k: getattr(args, k) for k in ("epochs", "lr", "head_lr", "batch_size", "seed", "holdout_seed", "test_fraction", "limit")}
    data_sha, base_sha = mc.sha256_of(args.data), mc.sha256_of(base / "model.onnx")
    key = hashlib.sha256(json.dumps([base_sha, data_sha, settings], sort_keys=True).encode()).hexdigest()

    def build(tmp: Path) -> tuple[Path, str]:
        import jax

        jax.config.update("jax_platforms", "cpu")
        ex = Examples(records, base / "tokenizer.json", max_seq)
        test_idx = [i for i, r in enumerate(records) if r["prompt"] in held]
        train_idx = [i for i, r in enumerate(records) if r["prompt"] not in held]
        tuned, report = train(args, weights, config, ex, train_idx, test_idx)
        dest = tmp / "model"
        m2o.write(tuned, base / "config.json", base / "tokenizer.json", dest, max_seq)
        diff = m2o.check(dest, tuned, config)
        if diff > 1e-5:
            raise m2o.ConvertError(f"the written model.onnx differs from the numpy forward pass by {diff:.2e}")
        info = {
            "base": str(base),
            "base_model_sha256": base_sha,
            "data": str(args.data),
            "data_sha256": data_sha,
            "records": len(records),
            "settings": settings,
            **report,
        }
        (dest / "finetune.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        return dest, "settings+data"

    return mc.cached(out.parent, out.name, key, REQUIRED, build)


def main(argv: list[str] | None = None) -> int:
    cache = Path(os.environ.get("SAFEDRIFT_MODEL_CACHE") or Path.home() / ".cache" / "safedrift" / "models")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", type=Path, default=cache, help="where fetch_minilm.py keeps the base (default: $SAFEDRIFT_MODEL_CACHE, else ~/.cache/safedrift/models)")
    ap.add_argument("--base", type=Path, help=f"the converted base encoder (default: CACHE/{BASE_NAME})")
    ap.add_argument("--out", type=Path, help=f"the fine-tuned encoder's directory (default: CACHE/{OUT_NAME})")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="labelled JSON lines (default: the built-in corpus)")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--lr", type=float, default=3e-5, help="peak learning rate of the encoder")
    ap.add_argument("--head-lr", type=float, default=1e-3, help="peak learning rate of the training network's heads")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0, help="seed of the initialization and the batch order")
    ap.add_argument("--holdout-seed", type=int, default=42, help="distill's --seed: its held-out prompts are not trained on")
    ap.add_argument("--test-fraction", type=float, default=0.2, help="distill's --test-fraction (0: train on everything)")
    ap.add_argument("--limit", type=int, default=0, help="train on a seeded sample of this many records (0: all)")
    ap.add_argument("--check-forward", action="store_true", help="compare the JAX forward pass with ONNX Runtime on the base and exit")
    args = ap.parse_args(argv)
    args.base = args.base or args.cache_dir / BASE_NAME
    args.out = args.out or args.cache_dir / OUT_NAME
    problems = [
        (args.epochs <= 0 or args.epochs > 100, "--epochs must be in (0, 100]"),
        (not 0 < args.lr < 1 or not 0 < args.head_lr < 1, "learning rates must be in (0, 1)"),
        (not 1 <= args.batch_size <= 512, "--batch-size must be 1-512"),
        (not 0 <= args.test_fraction < 1, "--test-fraction must be in [0, 1)"),
        (args.limit < 0, "--limit must be 0 or more"),
    ]
    for bad, msg in problems:
        if bad:
            print(f"finetune_minilm: error: {msg}", file=sys.stderr)
            return 2
    try:
        import jax  # noqa: F401
        import optax  # noqa: F401
    except ImportError as exc:
        print(f"finetune_minilm: error: {exc.name} is not installed: python3 -m pip install -r tools/requirements.txt", file=sys.stderr)
        return 2
    try:
        if args.check_forward:
            return check_forward(args.base)
        path = run(args)
    except (InputError, m2o.ConvertError, mc.CacheError, OSError) as exc:
        print(f"finetune_minilm: error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
