#!/usr/bin/env python3
"""Prints the root crate's files over a line limit, its functions over a
length limit (tests excluded), and its import circles: the shape targets of
docs/architecture.md.

    python3 tools/code_shape.py [--files 600] [--functions 100] [DIR...]

An import is a path a file names (`crate::a::b`, `super::c`, `use super::*`)
resolved to the module file that defines it; a circle is a set of files that
reach each other through imports (a strongly connected component of more
than one file). Unit tests are left out (`tests.rs` files and the code after
a `#[cfg(test)]` line).

A function is measured from its `fn` line to the line of its closing brace,
found by counting braces outside strings, chars and comments. Code after a
`#[cfg(test)]` module line is skipped (unit tests live at the end of files).
"""
import argparse
import pathlib
import re
import sys

FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(async\s+)?(unsafe\s+)?(const\s+)?fn\s+(\w+)")


def strip(line, state):
    """The line without strings, chars and comments; state carries a block
    comment or a raw/normal string across lines."""
    out = []
    i = 0
    while i < len(line):
        if state["block"]:
            end = line.find("*/", i)
            if end < 0:
                return "".join(out)
            state["block"] = False
            i = end + 2
            continue
        if state["string"]:
            c = line[i]
            if c == "\\":
                i += 2
                continue
            if c == '"' and line[i + 1 : i + 1 + state["hashes"]] == "#" * state["hashes"]:
                state["string"] = False
                i += 1 + state["hashes"]
                continue
            i += 1
            continue
        if line.startswith("//", i):
            break
        if line.startswith("/*", i):
            state["block"] = True
            i += 2
            continue
        m = re.match(r'r(#*)"', line[i:])
        if m and (i == 0 or not (line[i - 1].isalnum() or line[i - 1] == "_")):
            state["string"] = True
            state["hashes"] = len(m.group(1))
            i += len(m.group(0))
            continue
        if line[i] == '"':
            state["string"] = True
            state["hashes"] = 0
            i += 1
            continue
        m = re.match(r"'(\\.|[^\\'])'", line[i:])
        if m:
            i += len(m.group(0))
            continue
        out.append(line[i])
        i += 1
    return "".join(out)


def functions(path):
    lines = path.read_text().splitlines()
    state = {"block": False, "string": False, "hashes": 0}
    stack = []  # (name, start line, depth at which its body opened)
    depth = 0
    found = []
    for n, line in enumerate(lines, 1):
        if line.strip().startswith("#[cfg(test)]"):
            break
        m = FN.match(line) if not state["string"] and not state["block"] else None
        code = strip(line, state)
        if m:
            stack.append([m.group(6), n, None])
        for c in code:
            if c == "{":
                depth += 1
                if stack and stack[-1][2] is None:
                    stack[-1][2] = depth
            elif c == "}":
                if stack and stack[-1][2] == depth:
                    name, start, _ = stack.pop()
                    found.append((n - start + 1, name, start))
                depth -= 1
            elif c == ";" and stack and stack[-1][2] is None:
                stack.pop()  # a declaration without a body
    return found


def module_of(path, root):
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return tuple(parts)


def imports(path, root, modules):
    """The module files `path` names (`crate::` and `super::` paths; a
    relative `use child::...` of a parent is not followed)."""
    me = module_of(path, root)
    text = []
    for line in path.read_text().splitlines():
        if line.strip().startswith("#[cfg(test)]"):
            break
        if not line.strip().startswith("//"):
            text.append(line)
    text = "\n".join(text)
    found = set()
    refs = [("crate", m) for m in re.findall(r"\bcrate((?:::\w+)+)", text)]
    refs += [("super", m) for m in re.findall(r"\bsuper((?:::\w+)+)", text)]
    refs += [("super", "") for _ in re.findall(r"\bsuper::\*", text)]
    for base, rest in refs:
        names = [n for n in rest.split("::") if n]
        # `super` is the parent module, for `a/b.rs` and `a/mod.rs` alike.
        start = () if base == "crate" else me[:-1]
        path_ = start + tuple(names)
        while path_ and path_ not in modules:
            path_ = path_[:-1]
        if path_ in modules and path_ != me:
            found.add(path_)
    return found


def circles(root):
    files = [p for p in root.rglob("*.rs") if p.name != "tests.rs" and "tests" not in p.parts]
    files = [p for p in files if p.name != "main.rs" and "cli" not in p.relative_to(root).parts]
    modules = {module_of(p, root): p for p in files}
    graph = {m: imports(p, root, modules) for m, p in modules.items()}
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(str(modules[m]) for m in comp))

    sys.setrecursionlimit(10000)
    for m in graph:
        if m not in index:
            visit(m)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=600)
    ap.add_argument("--functions", type=int, default=100)
    ap.add_argument("dirs", nargs="*", default=["src"])
    args = ap.parse_args()
    over = 0
    for d in args.dirs:
        for path in sorted(pathlib.Path(d).rglob("*.rs")):
            n = len(path.read_text().splitlines())
            if n > args.files:
                print(f"file {path}: {n} lines")
                over += 1
            for length, name, start in functions(path):
                if length > args.functions:
                    print(f"fn {path}:{start} {name}: {length} lines")
                    over += 1
    print(f"{over} over the limits (files > {args.files} lines, functions > {args.functions} lines)")
    found = circles(pathlib.Path("src"))
    for c in found:
        print("circle: " + ", ".join(c))
    print(f"{len(found)} import circles in src (the library; main.rs and cli/ import it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
