#!/usr/bin/env python3
"""Copy a labelled evaluation set with each record's `category` set to its `style`.

    python3 tools/by_style.py data/judge-eval/sealed.jsonl > /tmp/sealed_by_style.jsonl
    safedrift judge-eval --judge J --data /tmp/sealed_by_style.jsonl --output json

`judge-eval` reports figures per category; on the copy its per-category figures are per answer
style, which is how the README's tables of where each judge fails are made. A record without a
`style` keeps its category. Exit status 2 names the file and line of a record that is not JSON.
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    path = sys.argv[1]
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 2
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            print(f"{path}:{n}: not JSON ({exc})", file=sys.stderr)
            return 2
        if isinstance(record, dict) and isinstance(record.get("style"), str):
            record["category"] = record["style"]
        print(json.dumps(record, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
