"""ArtifactCache: content keys, atomic publish, exactly-once builds across processes."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from quantbench.cache import ArtifactCache, ArtifactMissing, atomic_write_json, hash_key, sha256_file


def test_hash_key_is_order_insensitive_for_dict_keys_and_sensitive_to_values():
    assert hash_key({"a": 1, "b": 2}) == hash_key({"b": 2, "a": 1})
    assert hash_key({"a": 1}) != hash_key({"a": 2})
    assert hash_key("x", 1) != hash_key("x", 2)


def test_sha256_file_tracks_content_changes(tmp_path: Path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"one")
    first = sha256_file(p)
    time.sleep(0.01)
    p.write_bytes(b"two")
    os.utime(p, ns=(time.time_ns(), time.time_ns()))
    assert sha256_file(p) != first


def test_get_or_build_builds_once_and_publishes_metadata(cache: ArtifactCache):
    calls = []

    def build(tmp: Path):
        calls.append(tmp)
        tmp.write_text("artefact")
        return {"note": "built"}

    first = cache.get_or_build("demo", "k1", ".txt", build)
    second = cache.get_or_build("demo", "k1", ".txt", build)
    assert first.built and not second.built
    assert len(calls) == 1
    assert second.path.read_text() == "artefact"
    assert second.meta["note"] == "built" and second.meta["key"] == "k1"
    # Nothing but the artefact, its metadata and the lock file remains in the folder.
    names = sorted(p.name for p in first.path.parent.iterdir())
    assert names == ["k1.txt", "k1.txt.json", "k1.txt.lock"]


def test_read_only_view_answers_from_the_cache_and_never_builds(cache: ArtifactCache):
    cache.get_or_build("demo", "have", ".txt", lambda tmp: tmp.write_text("here") and None)
    view = cache.read_only()

    def must_not_run(tmp: Path):
        raise AssertionError("a read-only view built something")

    found = view.get_or_build("demo", "have", ".txt", must_not_run)
    assert found.path.read_text() == "here" and not found.built
    with pytest.raises(ArtifactMissing) as missing:
        view.get_or_build("demo", "absent", ".txt", must_not_run)
    assert (missing.value.kind, missing.value.key) == ("demo", "absent")
    assert not (cache.root / "demo" / "absent.txt.lock").exists()  # not even a lock file


def test_file_digests_are_remembered_until_a_file_changes(cache: ArtifactCache, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch):
    files = [tmp_path / f"img{i}.jpg" for i in range(3)]
    for i, f in enumerate(files):
        f.write_bytes(bytes([i]) * 1000)
    expected = [sha256_file(f) for f in files]
    assert cache.file_digests(files) == expected
    # Remembered: a second call reads no file (a hasher that refuses proves it) ...
    def refuse(path):
        raise AssertionError(f"re-read {path}")

    with monkeypatch.context() as patched:
        patched.setattr("quantbench.cache.sha256_file", refuse)
        assert cache.file_digests(files) == expected
    # ... until one changes: new size and mtime, new digest.
    files[1].write_bytes(b"changed")
    os.utime(files[1], ns=(time.time_ns(), time.time_ns() + 10**9))
    assert cache.file_digests(files) == [expected[0], sha256_file(files[1]), expected[2]]
    assert cache.file_digests(files)[1] != expected[1]


def test_failed_build_publishes_nothing_and_retries(cache: ArtifactCache):
    def broken(tmp: Path):
        tmp.write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        cache.get_or_build("demo", "k2", ".txt", broken)
    assert cache.lookup("demo", "k2", ".txt") is None
    assert not any(p.suffix == ".tmp" or ".tmp" in p.name for p in (cache.root / "demo").iterdir())
    entry = cache.get_or_build("demo", "k2", ".txt", lambda tmp: tmp.write_text("ok") and None)
    assert entry.built and entry.path.read_text() == "ok"


def _race(root: str, log: str) -> None:
    def build(tmp: Path):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.3)  # long enough that every process arrives while the first one builds
        tmp.write_text("shared")
        return None

    entry = ArtifactCache(root).get_or_build("race", "same", ".txt", build)
    assert entry.path.read_text() == "shared"


def test_concurrent_processes_build_exactly_once(tmp_path: Path):
    log = tmp_path / "builds.log"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_race, args=(str(tmp_path / "c"), str(log))) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(log.read_text().split()) == 1


def test_atomic_write_json_replaces_whole_file(tmp_path: Path):
    target = tmp_path / "r" / "result.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"b": 2})
    assert json.loads(target.read_text()) == {"b": 2}
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]


def _build_forever(root: str, ready: str) -> None:
    def build(tmp: Path):
        tmp.write_bytes(b"half")
        Path(ready).write_text("building")
        time.sleep(600)  # killed long before this ends

    ArtifactCache(root).get_or_build("demo", "slow", ".onnx", build)


def _killed_mid_build(root: Path, tmp_path: Path) -> None:
    """A real process killed with SIGKILL while it builds (what a killed bench leaves)."""
    import signal

    ready = tmp_path / "ready"
    proc = mp.get_context("spawn").Process(target=_build_forever, args=(str(root), str(ready)))
    proc.start()
    deadline = time.time() + 60
    while not ready.exists():
        assert proc.is_alive() and time.time() < deadline, "the build never started"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)


def test_a_killed_build_leaves_nothing_that_is_used_and_its_temp_file_is_removed_at_start_up(tmp_path: Path):
    root = tmp_path / "c"
    _killed_mid_build(root, tmp_path)
    cache = ArtifactCache(root)
    leftovers = [p for p in (root / "demo").iterdir() if ".tmp" in p.name]
    assert len(leftovers) == 1 and cache.lookup("demo", "slow", ".onnx") is None  # never published
    live = root / "demo" / f".other.onnx.{os.getpid()}-deadbeef.x.tmp.onnx"  # another machine's: left alone
    live.write_bytes(b"")
    with cache_module_tempfile(root / "demo") as in_progress:  # this live process's own temp file
        assert cache.remove_stale_files() == leftovers
        assert in_progress.exists() and live.exists()
    assert not leftovers[0].exists()
    entry = cache.get_or_build("demo", "slow", ".onnx", lambda tmp: tmp.write_text("whole") and None)
    assert entry.built and entry.path.read_text() == "whole"


def cache_module_tempfile(folder: Path):
    from quantbench.cache import _temp_path_beside

    return _temp_path_beside(folder / "live.onnx")


def _hold_lock(root: str, ready: str) -> None:
    def build(tmp: Path):
        Path(ready).write_text("holding")
        time.sleep(2.0)
        tmp.write_text("made elsewhere")

    ArtifactCache(root).get_or_build("demo", "locked", ".txt", build, label="demo build of m/v")


@pytest.mark.slow
def test_a_process_waiting_on_a_lock_says_what_it_waits_for(tmp_path: Path):
    ready = tmp_path / "ready"
    holder = mp.get_context("spawn").Process(target=_hold_lock, args=(str(tmp_path / "c"), str(ready)))
    holder.start()
    deadline = time.time() + 60
    while not ready.exists():
        assert holder.is_alive() and time.time() < deadline, "the lock holder never started its build"
        time.sleep(0.05)
    heard: list[str] = []
    entry = ArtifactCache(tmp_path / "c", on_wait=heard.append).get_or_build(
        "demo", "locked", ".txt", lambda tmp: pytest.fail("built twice"), label="demo build of m/v")
    holder.join(30)
    assert entry.path.read_text() == "made elsewhere" and not entry.built
    assert heard[0] == "waiting for another process to finish the demo build of m/v (locked.txt.lock is held)"
    assert heard[1].startswith("done waiting for the demo build of m/v (")


def test_output_folders_are_checked_before_any_work(tmp_path: Path):
    from quantbench.cache import check_output_file, ensure_writable_dir
    from quantbench.errors import OutputError

    assert ensure_writable_dir(tmp_path / "new" / "reports", what="report folder").is_dir()
    assert list((tmp_path / "new" / "reports").iterdir()) == []  # the probe file is gone
    (tmp_path / "file").write_text("x")
    cases = {
        tmp_path / "file" / "reports": "cannot be written",  # under a regular file
        tmp_path / "file": "is a file, not a folder",
        Path("/sys/quantbench-reports"): "cannot be written",  # not writable, even for root
    }
    for folder, why in cases.items():
        with pytest.raises(OutputError, match=why) as refused:
            ensure_writable_dir(folder, what="report folder")
        assert str(folder) in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(OutputError, match="is a folder; pass a file path"):
        check_output_file(tmp_path, what="--json file")
    with pytest.raises(OutputError, match="the folder of --json file .*/file is a file, not a folder"):
        check_output_file(tmp_path / "file" / "out.json", what="--json file")


def test_check_writable_creates_nothing_and_names_each_place(tmp_path: Path):
    """Issue 22 (5): the start-up check of every output place; a run that then fails leaves no folder."""
    from quantbench.cache import check_writable
    from quantbench.errors import OutputError

    (tmp_path / "file").write_text("x")
    check_writable(folders=[(tmp_path / "new" / "deeper", "--out-dir")], files=[(tmp_path / "n" / "r.json", "--json")])
    assert not (tmp_path / "new").exists() and not (tmp_path / "n").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # the write probe is gone too
    cases = [
        ({"folders": [(tmp_path / "file", "--out-dir")]}, f"--out-dir {tmp_path / 'file'} is a file, not a folder"),
        ({"folders": [(tmp_path / "file" / "x", "--out-dir")]},
         f"--out-dir {tmp_path / 'file' / 'x'} cannot be written ({tmp_path / 'file'} is a file)"),
        ({"folders": [("/sys/qb-x", "cache folder")]}, "cache folder /sys/qb-x cannot be written"),
        ({"files": [(tmp_path, "--json")]}, f"--json {tmp_path} is a folder; pass a file path such as"),
    ]
    for kwargs, says in cases:
        with pytest.raises(OutputError) as err:
            check_writable(**kwargs)
        assert says in str(err.value) and str(err.value).endswith(".")
