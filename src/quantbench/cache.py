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
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from quantbench.errors import OutputError

_CHUNK = 1 << 20
# mkstemp creates files 0600; published artefacts and reports get the usual umask-based mode.
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK
_file_hash_memo: dict[tuple[str, int, int], str] = {}
_DIGESTS_KIND, _DIGESTS_VERSION = "digests", 1
# Temporary files and scratch folders carry "<pid>-<host hash>" of the process that made them, so a
# later start-up can tell the leftovers of a killed process from another process's work in progress.
_OWNER_RE = re.compile(r"(\d+)-([0-9a-f]{8})")
# Leftovers from before owners were named: removed once they are this old.
_UNOWNED_STALE_S = 24 * 3600

log = logging.getLogger(__name__)


def owner_tag() -> str:
    """``<pid>-<host hash>``: who is writing a temporary file, a scratch folder or a run ledger."""
    return f"{os.getpid()}-{_host_hash()}"


def _host_hash() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def owner_is_gone(tag: str) -> bool:
    """True when ``tag`` names a process of this machine that no longer runs (other machines: False)."""
    match = _OWNER_RE.fullmatch(tag.strip())
    if match is None or match.group(2) != _host_hash():
        return False
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by someone else
        return False
    return False


def _is_stale(path: Path, tag: str | None) -> bool:
    if tag is not None:
        return owner_is_gone(tag)
    with contextlib.suppress(FileNotFoundError):
        return time.time() - path.lstat().st_mtime > _UNOWNED_STALE_S
    return False


@contextlib.contextmanager
def owned_scratch_dir(prefix: str) -> Iterator[Path]:
    """A temporary folder named after this process, removed on exit (`remove_stale_scratch` takes a killed one's)."""
    with tempfile.TemporaryDirectory(prefix=f"{prefix}{owner_tag()}-") as name:
        yield Path(name)


def remove_stale_scratch(prefix: str) -> list[Path]:
    """Remove the scratch folders (`owned_scratch_dir`) that processes killed on this machine left behind."""
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        match = _OWNER_RE.match(folder.name[len(prefix):])
        if folder.is_dir() and _is_stale(folder, match.group(0) if match else None):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


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
        try:
            tmp.write_bytes(data)
        except OSError as exc:  # the temporary file goes with the context: nothing half-written stays
            raise no_space_error(exc, target) or exc from None
        os.replace(tmp, target)
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def ensure_writable_dir(folder: str | os.PathLike[str], *, what: str) -> Path:
    """Create ``folder`` if needed and prove a file can be written in it; OutputError otherwise.

    Called before any work, so that a run never measures for minutes and then loses its results
    to a folder it cannot write (the check writes and removes a temporary file: permission bits
    say nothing for root, read-only mounts or a path under a regular file).
    """
    target = Path(folder).expanduser()
    _check_folder(target, what)  # the check every command makes (`check_writable`), then the folder made
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"{what} {target} cannot be written ({exc.strerror or exc}); pass a folder you can write to."
        ) from None
    return target


def check_writable(*, folders: Iterable[tuple[str | os.PathLike[str], str]] = (),
                   files: Iterable[tuple[str | os.PathLike[str], str]] = ()) -> None:
    """The one start-up check of a command's or a bench session's output places: every ``(folder,
    what)`` (the cache, a report folder) and ``(file, what)`` (a --json or --markdown file) can be
    written, else `OutputError` naming it, before any work.

    Nothing is created: a folder that does not exist yet is checked through its nearest existing
    parent (a command that then fails on its inputs leaves no empty report folder behind).
    """
    for folder, what in folders:
        _check_folder(Path(folder).expanduser(), what)
    for file, what in files:
        target = Path(file).expanduser()
        if target.is_dir():
            example = target / ("comparison.md" if "markdown" in what else "result.json")
            raise OutputError(f"{what} {target} is a folder; pass a file path such as {example}.")
        _check_folder(target.parent, f"the folder of {what}")


def _check_folder(target: Path, what: str) -> None:
    if target.exists() and not target.is_dir():
        raise OutputError(f"{what} {target} is a file, not a folder; pass a folder path.")
    existing = target
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{existing} is a file")
        with _temp_path_beside(existing / "write-check"):
            pass
    except OSError as exc:
        raise OutputError(
            f"{what} {target} cannot be written ({exc.strerror or exc}); pass a folder you can write to."
        ) from None


# "The disk is full" in its three forms: no space, over a quota, over the file-size limit (ulimit -f).
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def no_space_error(exc: OSError, path: str | os.PathLike[str]) -> OutputError | None:
    """`OutputError` (one sentence) when ``exc`` says the disk is full while writing ``path``, else None."""
    if exc.errno not in _NO_SPACE:
        return None
    return OutputError(f"no space left on device writing {path} ({exc.strerror}); free space or point "
                       "QUANTBENCH_CACHE elsewhere.")


def check_output_file(path: str | os.PathLike[str], *, what: str) -> Path:
    """``path`` can be written as a file (its folder is created); OutputError naming it otherwise."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise OutputError(f"{what} {target} is a folder; pass a file path such as {target / 'result.json'}.")
    ensure_writable_dir(target.parent, what=f"the folder of {what}")
    return target


@contextlib.contextmanager
def _temp_path_beside(target: Path) -> Iterator[Path]:
    """A fresh temporary path in ``target``'s folder (same filesystem, so replace is atomic)."""
    # The temporary name keeps the artefact's suffix (some writers, ModelOpt and onnx, look at it)
    # and names its owner (see `ArtifactCache.remove_stale_files`).
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.{owner_tag()}.", suffix=f".tmp{target.suffix}",
                                dir=target.parent)
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

    def __init__(self, root: str | os.PathLike[str], *, on_wait: Callable[[str], None] | None = None):
        self.root = Path(root).expanduser()
        # Told, once per wait, what this process waits for when another one holds a build's lock.
        self.on_wait = on_wait or (lambda message: log.warning("%s", message))

    def remove_stale_files(self) -> list[Path]:
        """Remove the temporary files that processes killed on this machine left in the cache.

        A killed build leaves its private temporary file (``.<artefact>.<owner>.<random>.tmp<suffix>``,
        often 0 bytes) beside where the artefact would have been published; it is never read (only
        published names are), but it would pile up. Files of live processes and of other machines
        sharing the cache are left alone.
        """
        removed = []
        for tmp in self.root.glob("*/.*.tmp*") if self.root.is_dir() else ():
            match = _OWNER_RE.search(tmp.name)
            if tmp.is_file() and _is_stale(tmp, match.group(0) if match else None):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                    removed.append(tmp)
        return removed

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
        self._remember_digests(memo, {"files": [s[0] for s in stats], "sha256": digests})
        return digests

    def _remember_digests(self, memo: Path, content: dict[str, Any]) -> None:
        atomic_write_json(memo, content)

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
        *,
        label: str | None = None,
    ) -> CacheEntry:
        """Return the artefact for ``key``, building it once if absent.

        ``build(tmp_path)`` writes the artefact to ``tmp_path`` and returns JSON-able metadata.
        If it raises, nothing is published and the exception propagates unchanged; the next call
        tries again. ``label`` says what the artefact is (``ModelOpt build of m/v``) in the message
        `on_wait` gets while another process holds its lock.
        """
        found = self.lookup(kind, key, suffix)
        if found is not None:
            return found
        path = self.path_for(kind, key, suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked(path, label or f"{kind}/{path.name}"):
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

    @contextlib.contextmanager
    def _locked(self, path: Path, label: str) -> Iterator[None]:
        lock = FileLock(str(path) + ".lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            self.on_wait(f"waiting for another process to finish the {label} ({path.name}.lock is held)")
            started = time.perf_counter()
            lock.acquire()
            self.on_wait(f"done waiting for the {label} ({time.perf_counter() - started:.1f} s)")
        try:
            yield
        finally:
            lock.release()


class _ReadOnlyArtifactCache(ArtifactCache):
    """`ArtifactCache.read_only`: lookups only; it writes nothing, not even the file-digest memo."""

    def _remember_digests(self, memo: Path, content: dict[str, Any]) -> None:
        pass

    def get_or_build(self, kind: str, key: str, suffix: str,
                     build: Callable[[Path], dict[str, Any] | None], *, label: str | None = None) -> CacheEntry:
        found = self.lookup(kind, key, suffix)
        if found is None:
            raise ArtifactMissing(kind, key)
        return found
