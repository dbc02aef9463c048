"""Content-addressed caching helpers: stable digests and atomic writes.

Every expensive, deterministic result (face crops, embeddings, tuner state, trained
models) lives under a key derived from its inputs, so re-running with unchanged inputs
reuses it and an interrupted run resumes from what was already written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


def digest(obj: Any, length: int = 16) -> str:
    """Stable short hex digest of a JSON-serialisable object (key order ignored)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write via a temp file + rename so a killed process never leaves a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True, default=str).encode())


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes sharing the cache (workers of one search)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        try:
            import fcntl
        except ImportError:  # not POSIX: no locking, atomic writes still keep files whole
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def stage_cache(cache_dir: Path, stage: str, key: str, out_dir: Path, compute: Callable[[], Any]) -> tuple[Any, bool]:
    """``compute()`` writes ``out_dir`` and returns a JSON-able result; cached under
    ``cache_dir/stage/key``. A later call with the same key copies the folder back into
    ``out_dir`` and returns the stored result without computing: ``(result, from_cache)``.
    The entry is written whole (temporary folder, then rename), so a killed run leaves none."""
    entry = Path(cache_dir) / stage / key
    if (entry / "result.json").exists():
        shutil.copytree(entry / "out", out_dir, dirs_exist_ok=True)
        return read_json(entry / "result.json"), True
    result = compute()
    tmp = entry.with_name(f".{key}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(out_dir, tmp / "out", symlinks=True)
    atomic_write_json(tmp / "result.json", result)
    try:
        os.replace(tmp, entry)
    except OSError:  # another run stored the same key meanwhile: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return result, False


def compute_seconds(entry: Path, seconds: float, computed: bool) -> float | None:
    """What computing a cache entry cost, whichever run computed it: ``seconds`` (this
    run's, added to what earlier, interrupted runs spent) is stored in ``entry`` when it
    was ``computed`` here; a run that read the entry from the cache gets the stored cost
    back (None for entries made before costs were kept). Training time is a comparison
    criterion: a cached run must not report its few seconds as the cost."""
    ledger = Path(entry) / "compute_seconds.json"
    stored = read_json(ledger).get("seconds") if ledger.exists() else None
    if not computed:
        return stored
    total = round(float(seconds) + float(stored or 0.0), 3)
    atomic_write_json(ledger, {"seconds": total})
    return total
