#!/usr/bin/env python3
"""The Python engines of benches/onnx_decode.sh, and its report.

    onnx_decode.py genai GENAI_DIR INPUT.json --batch N
    onnx_decode.py ortloop MODEL_DIR INPUT.json --batch N [--ignore-eos] [--threads N]
    onnx_decode.py report WORK_DIR [RUNS]

INPUT.json is {"prompts": [[token ids...], ...], "max_new_tokens": N}. Both engines decode greedily
in fixed batches of N prompts, in file order, left-padded, and print one JSON document like the Rust
example's: {"engine", "batch", "prompts", "load_s", "wall_s", "tokens", "tokens_per_s", "outputs"}
(wall_s: decoding only, session load excluded; outputs without the end token).

- genai: onnxruntime-genai's Generator on GENAI_DIR (the model with a genai_config.json). A batch
  is right-padded with the config's pad id (genai 0.18 masks pad ids after a row's last real token,
  not before its first), and runs until every row has ended or reached max_new_tokens (genai's own
  stopping); the end ids come from genai_config.json (the script names an id no engine generates
  for the exact-length runs).
- ortloop: tools/reference_decode.py's plain onnxruntime loop (numpy, KV cache, no sorting, no
  compaction: a finished row runs on until its batch is done). --ignore-eos: no end ids.

report reads the files benches/onnx_decode.sh leaves in WORK_DIR and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def read_input(path: Path) -> tuple[list[list[int]], int]:
    request = json.loads(path.read_text(encoding="utf-8"))
    return request["prompts"], int(request["max_new_tokens"])


def chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def result(engine: str, batch: int, load_s: float, wall_s: float, outputs: list[list[int]]) -> dict:
    tokens = sum(len(o) for o in outputs)
    return {
        "engine": engine,
        "batch": batch,
        "prompts": len(outputs),
        "load_s": load_s,
        "wall_s": wall_s,
        "tokens": tokens,
        "tokens_per_s": tokens / wall_s if wall_s > 0 else 0.0,
        "outputs": outputs,
    }


def run_genai(model_dir: Path, prompts: list[list[int]], max_new: int, batch: int) -> dict:
    import onnxruntime_genai as og

    config = json.loads((model_dir / "genai_config.json").read_text(encoding="utf-8"))["model"]
    eos = config["eos_token_id"]
    eos = set(eos if isinstance(eos, list) else [eos])
    pad = int(config["pad_token_id"])
    if any(pad in p for p in prompts):
        raise SystemExit(f"a prompt holds the pad id {pad}; genai would mask it out")
    loading = time.perf_counter()
    model = og.Model(str(model_dir))
    load_s = time.perf_counter() - loading
    outputs: list[list[int]] = []
    started = time.perf_counter()
    for chunk in chunks(prompts, batch):
        width = max(len(p) for p in chunk)
        ids = np.full((len(chunk), width), pad, dtype=np.int32)
        for row, p in enumerate(chunk):
            ids[row, : len(p)] = p  # genai takes right padding: pads after the last real token
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=width + max_new, batch_size=len(chunk))
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        while not generator.is_done():
            generator.generate_next_token()
        for row in range(len(chunk)):
            out = []
            for token in generator.get_sequence(row)[width:]:
                if int(token) in eos:
                    break
                out.append(int(token))
            outputs.append(out)
        del generator
    return result("genai", batch, load_s, time.perf_counter() - started, outputs)


def run_ortloop(
    model_dir: Path, prompts: list[list[int]], max_new: int, batch: int, ignore_eos: bool, threads: int | None
) -> dict:
    sys.path.insert(0, str(ROOT / "tools"))
    import reference_decode

    loading = time.perf_counter()
    decoder = reference_decode.Decoder(model_dir, threads)
    load_s = time.perf_counter() - loading
    eos = set() if ignore_eos else reference_decode.load_eos(model_dir)
    outputs: list[list[int]] = []
    started = time.perf_counter()
    for chunk in chunks(prompts, batch):
        outputs.extend(decoder.generate(chunk, max_new, eos))
    return result("python-ort", batch, load_s, time.perf_counter() - started, outputs)


def peak_rss_mib(path: Path) -> float | None:
    """Maximum resident set size from a `/usr/bin/time -v` log."""
    if not path.is_file():
        return None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if "Maximum resident set size" in line:
            return int(line.rsplit(":", 1)[1]) / 1024
    return None


def elapsed_s(path: Path) -> float | None:
    """Wall clock time from a `/usr/bin/time -v` log (h:mm:ss or m:ss.cc)."""
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if "Elapsed (wall clock) time" in line:
            value = line.split("):", 1)[1].strip()
            seconds = 0.0
            for part in value.split(":"):
                seconds = seconds * 60 + float(part)
            return seconds
    return None


def median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def report(work: Path, runs: int) -> int:
    """Prints the table: per test and engine the best run and the median of `runs`."""
    engines = ["safedrift", "genai", "python-ort"]
    rows = []
    verdicts = []
    mismatched = []
    load = lambda name: json.loads((work / name).read_text(encoding="utf-8"))  # noqa: E731
    for test, label in [("b1", "batch 1"), ("b8", "batch 8")]:
        docs = {
            e: [load(f"{test}.{e}.{r}.json") for r in range(1, runs + 1)]
            for e in engines
            if (work / f"{test}.{e}.1.json").is_file()
        }
        if not docs:
            continue
        distinct = {json.dumps(d["outputs"]) for ds in docs.values() for d in ds}
        match = len(distinct) == 1
        if not match:
            mismatched.append(label)
        speed = {e: [d["tokens_per_s"] for d in ds] for e, ds in docs.items()}
        for engine, ds in docs.items():
            best, med = max(speed[engine]), median(speed[engine])
            ratio = "-"
            if "genai" in speed:
                ratio = f"{best / max(speed['genai']):.2f}x / {med / median(speed['genai']):.2f}x"
            rows.append((
                label if engine == "safedrift" else "",
                engine,
                f"{ds[0]['prompts']}x{max(len(o) for o in ds[0]['outputs'])}",
                str(ds[0]["tokens"]),
                f"{best:.1f} / {med:.1f}",
                "",
                ratio,
                fmt_rss(max_rss(work, test, engine, runs)),
                ("yes" if match else "NO") if engine == "safedrift" else "",
            ))
        if "genai" in speed and "safedrift" in speed:
            verdicts.append((f"{label} tokens/s vs genai", max(speed["safedrift"]) / max(speed["genai"]),
                             median(speed["safedrift"]) / median(speed["genai"]), 1.0))

    whole_engines = sorted(
        {f.name.split(".")[1] for f in work.glob("whole.*.1.time")},
        key=lambda e: (e != "safedrift", not e.startswith("genai"), len(e), e),
    )
    genais = [e for e in whole_engines if e.startswith("genai")]
    if (work / "whole.prompts.json").is_file() and genais:
        meta = load("whole.prompts.json")
        n = len(meta["prompts"])
        e2e = {e: [elapsed_s(work / f"whole.{e}.{r}.time") for r in range(1, runs + 1)] for e in whole_engines}
        texts = {}
        for engine in whole_engines:
            texts[engine] = []
            for r in range(1, runs + 1):
                if engine == "safedrift":
                    responses = {}
                    for line in (work / f"whole.safedrift.{r}.results.jsonl").read_text(encoding="utf-8").splitlines():
                        row = json.loads(line)
                        responses[row["prompt_id"]] = row["response"]
                    texts[engine].append([responses.get(i) for i in meta["ids"]])
                else:
                    texts[engine].append(load(f"whole.{engine}.{r}.texts.json")["texts"])
        reference = texts[genais[0]][0]
        same = {e: min(sum(1 for a, b in zip(t, reference) if a == b) for t in ts) for e, ts in texts.items()}
        docs = {e: [load(f"whole.{e}.{r}.json") for r in range(1, runs + 1)] for e in whole_engines if e != "safedrift"}
        for engine in whole_engines:
            tokens = docs[engine][0]["tokens"] if engine in docs else None
            if engine == "safedrift" and same["safedrift"] == n:
                tokens = docs[genais[0]][0]["tokens"]  # the same answers as genai, so the same tokens
            best, med = n / min(e2e[engine]), n / median(e2e[engine])
            ratios = []
            for g in genais:
                gbest, gmed = n / min(e2e[g]), n / median(e2e[g])
                ratios.append(f"{best / gbest:.2f}x / {med / gmed:.2f}x")
            rows.append((
                f"whole ({n} prompts)" if engine == "safedrift" else "",
                engine,
                f"{n}x<={meta['max_new_tokens']}",
                str(tokens) if tokens is not None else "?",
                f"{tokens / min(e2e[engine]):.1f} / {tokens / median(e2e[engine]):.1f}" if tokens else "-",
                f"{best:.3f} / {med:.3f}",
                ", ".join(ratios),
                fmt_rss(max_rss(work, "whole", engine, runs)),
                f"{same[engine]}/{n} answers = {genais[0]}'s",
            ))
        for engine in whole_engines:
            line = f"whole, {engine}: end to end {min(e2e[engine]):.1f} s best, {median(e2e[engine]):.1f} s median"
            if engine in docs:
                walls = [d["wall_s"] for d in docs[engine]]
                line += f"; decoding alone {min(walls):.1f} s best, session load {docs[engine][0]['load_s']:.1f} s"
            print(line)
        if "safedrift" in e2e:
            for g in genais:
                verdicts.append((f"whole benchmark prompts/s vs {g}", min(e2e[g]) / min(e2e["safedrift"]),
                                 median(e2e[g]) / median(e2e["safedrift"]), 1.3))
        if any(v < n for v in same.values()):
            print("whole: some answers differ between engines (see the last column)", file=sys.stderr)
        print()

    header = ("test", "engine", "prompts x new", "tokens", "tokens/s best / med", "prompts/s best / med",
              "vs genai best / med (whole: per genai batch)", "peak RSS MiB", "greedy tokens match")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    print(f"({runs} run{'s' if runs > 1 else ''} of each; best = the fastest run, med = the median)")
    print(line(header))
    print(line(tuple("-" * w for w in widths)))
    for r in rows:
        print(line(r))
    print()
    for what, best, med, target in verdicts:
        met = "MET" if med >= target else ("MET at best only" if best >= target else "MISSED")
        print(f"{what}: {best:.2f}x best, {med:.2f}x median (target {target:.1f}x): {met}")
    if mismatched:
        print(f"greedy tokens differ between engines at {', '.join(mismatched)}", file=sys.stderr)
        return 1
    return 0


def max_rss(work: Path, test: str, engine: str, runs: int) -> float | None:
    values = [peak_rss_mib(work / f"{test}.{engine}.{r}.time") for r in range(1, runs + 1)]
    values = [v for v in values if v is not None]
    return max(values) if values else None


def fmt_rss(mib: float | None) -> str:
    return f"{mib:.0f}" if mib is not None else "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="genai and plain-ORT engines, and the report, of onnx_decode.sh")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("genai")
    g.add_argument("model_dir", type=Path)
    g.add_argument("input", type=Path)
    g.add_argument("--batch", type=int, default=1)
    o = sub.add_parser("ortloop")
    o.add_argument("model_dir", type=Path)
    o.add_argument("input", type=Path)
    o.add_argument("--batch", type=int, default=1)
    o.add_argument("--ignore-eos", action="store_true")
    o.add_argument("--threads", type=int, default=os.cpu_count())
    r = sub.add_parser("report")
    r.add_argument("work", type=Path)
    r.add_argument("runs", type=int, nargs="?", default=1)
    args = parser.parse_args(argv)
    if args.command == "report":
        return report(args.work, args.runs)
    prompts, max_new = read_input(args.input)
    if args.command == "genai":
        doc = run_genai(args.model_dir, prompts, max_new, args.batch)
    else:
        doc = run_ortloop(args.model_dir, prompts, max_new, args.batch, args.ignore_eos, args.threads)
    json.dump(doc, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
