"""Content-addressed artefact cache shared by every pipeline stage.

Each artefact (exported ONNX, calibration tensor, variant ONNX, engine) lives at
``<root>/<kind>/<key><suffix>`` where ``key`` hashes everything that determines its content.
A build writes into a private temporary file inside the same folder and is published with
``os.replace`` (atomic on POSIX), under a per-artefact file lock, so concurrent processes
(pytest-xdist workers, two terminals) build each artefact exactly once and readers never see a
half-written file. A sidecar ``<key>.json`` holds the build's metadata, written the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

_CHUNK = 1 << 20
# mkstemp creates files 0600; published artefacts and reports get the usual umask-based mode.
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK
_file_hash_memo: dict[tuple[str, int, int], str] = {}
_DIGESTS_KIND, _DIGESTS_VERSION = "digests", 1


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, memoised on (path, size, mtime) within the process."""
    p = Path(path)
    st = p.stat()
    memo_key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    digest = _file_hash_memo.get(memo_key)
    if digest is None:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
        digest = h.hexdigest()
        _file_hash_memo[memo_key] = digest
    return digest


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def hash_key(*parts: Any, length: int = 20) -> str:
    """Short hex key from any JSON-able parts (hashes, options, versions)."""
    return hashlib.sha256(canonical_json(list(parts)).encode()).hexdigest()[:length]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _temp_path_beside(target) as tmp:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextlib.contextmanager
def _temp_path_beside(target: Path) -> Iterator[Path]:
    """A fresh temporary path in ``target``'s folder (same filesystem, so replace is atomic)."""
    # The temporary name keeps the artefact's suffix: some writers (ModelOpt, onnx) look at it.
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, _FILE_MODE)
    try:
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


class ArtifactMissing(Exception):
    """Raised by a read-only cache view where building would have been needed (not a user error)."""

    def __init__(self, kind: str, key: str):
        super().__init__(f"{kind}/{key} is not in the cache")
        self.kind, self.key = kind, key


@dataclass(frozen=True)
class CacheEntry:
    """One published artefact: its path, its build metadata, and whether this call built it."""

    path: Path
    meta: dict[str, Any]
    built: bool


class ArtifactCache:
    """Content-addressed, lock-protected store of build artefacts under one root folder."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser()

    def read_only(self) -> ArtifactCache:
        """A view of the same cache that never builds: `get_or_build` raises `ArtifactMissing` instead.

        Running a pipeline stage against it answers "is this already built?" with the stage's own
        key computation, so nothing has to re-derive cache keys to plan work.
        """
        return _ReadOnlyArtifactCache(self.root)

    def file_digests(self, paths: list[Path]) -> list[str]:
        """sha256 of each file, remembered on disk by (path, size, mtime, inode) like git's index.

        Content keys over many inputs (500 calibration images) would otherwise re-read every byte
        in every session just to find out that nothing changed: stat-ing them is enough.
        """
        stats = []
        for p in paths:
            st = os.stat(p)
            stats.append((str(Path(p).resolve()), st.st_size, st.st_mtime_ns, st.st_ino))
        memo = self.root / _DIGESTS_KIND / f"{hash_key(_DIGESTS_VERSION, stats)}.json"
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError, KeyError):
            digests = json.loads(memo.read_text())["sha256"]
            if len(digests) == len(paths):
                return digests
        digests = [sha256_file(p) for p in paths]
        atomic_write_json(memo, {"files": [s[0] for s in stats], "sha256": digests})
        return digests

    def path_for(self, kind: str, key: str, suffix: str) -> Path:
        return self.root / kind / f"{key}{suffix}"

    def lookup(self, kind: str, key: str, suffix: str) -> CacheEntry | None:
        """The published artefact for ``key``, or None. Never builds, never waits on a lock."""
        path = self.path_for(kind, key, suffix)
        meta_path = path.with_name(path.name + ".json")
        if path.exists() and meta_path.exists():
            return CacheEntry(path, json.loads(meta_path.read_text()), built=False)
        return None

    def get_or_build(
        self,
        kind: str,
        key: str,
        suffix: str,
        build: Callable[[Path], dict[str, Any] | None],
    ) -> CacheEntry:
        """Return the artefact for ``key``, building it once if absent.

        ``build(tmp_path)`` writes the artefact to ``tmp_path`` and returns JSON-able metadata.
        If it raises, nothing is published and the exception propagates unchanged; the next call
        tries again.
        """
        found = self.lookup(kind, key, suffix)
        if found is not None:
            return found
        path = self.path_for(kind, key, suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            found = self.lookup(kind, key, suffix)  # another process may have built it meanwhile
            if found is not None:
                return found
            with _temp_path_beside(path) as tmp:
                meta = dict(build(tmp) or {})
                meta.setdefault("key", key)
                os.replace(tmp, path)
            # The metadata is published last: an artefact without it is never considered built.
            atomic_write_json(path.with_name(path.name + ".json"), meta)
            return CacheEntry(path, meta, built=True)


class _ReadOnlyArtifactCache(ArtifactCache):
    def get_or_build(self, kind: str, key: str, suffix: str,
                     build: Callable[[Path], dict[str, Any] | None]) -> CacheEntry:
        found = self.lookup(kind, key, suffix)
        if found is None:
            raise ArtifactMissing(kind, key)
        return found
