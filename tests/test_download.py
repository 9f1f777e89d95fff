"""Downloads, safe extraction and COCO subsets, for real, against an HTTP server on 127.0.0.1.

The server (``http.server`` in a daemon thread, stopped by the fixture and by a watchdog timer)
serves byte strings built in the test, honours ``Range: bytes=N-`` and can cut responses short to
imitate a dropped connection. The COCO archives it serves mimic the official layout
(``val2017/<id>.jpg`` and ``annotations/instances_val2017.json``) with tiny real JPEGs.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from quantbench.data import assets
from quantbench.data.dataset import CocoDataset
from quantbench.data.download import (
    COCO_VAL2017,
    CocoSource,
    RemoteArchive,
    UnsafeArchiveError,
    choose_subset,
    download_file,
    extract_archive,
    fetch_coco_subset,
    subset_folder,
)
from quantbench.errors import ConfigError, DataError, DownloadError

# --------------------------------------------------------------------------------------------
# A local HTTP server with Range support


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    cut_after: dict[str, list[int]] = field(default_factory=dict)  # path -> bytes to send, per request
    ignore_range: bool = False


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        state = self.server.state
        range_header = self.headers.get("Range")
        state.requests.append((self.path, range_header))
        body = state.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        if range_header and not state.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", range_header)[1])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        payload = body[start:]
        cuts = state.cut_after.get(self.path)
        if cuts:
            payload = payload[: cuts.pop(0)]  # then the connection closes: the client sees fewer bytes
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = ServerState()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def serve(self, path: str, body: bytes) -> str:
        self.state.files[path] = body
        return self.url(path)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    # A proxy configured in the environment must not intercept requests to 127.0.0.1.
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    watchdog = threading.Timer(120, srv.shutdown)  # stops by itself even if teardown never runs
    watchdog.daemon = True
    watchdog.start()
    try:
        yield srv
    finally:
        watchdog.cancel()
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


PAYLOAD = np.random.default_rng(7).integers(0, 256, size=300_000, dtype=np.uint8).tobytes()


# --------------------------------------------------------------------------------------------
# download_file


def test_full_download_checks_size_and_sha256_and_publishes_atomically(server: _Server, tmp_path: Path):
    url = server.serve("/files/blob.bin", PAYLOAD)
    dest = tmp_path / "downloads" / "blob.bin"
    got = download_file(url, dest, sha256=_sha(PAYLOAD), size=len(PAYLOAD), progress=False)
    assert got == dest
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("blob.bin.part").exists()
    assert server.state.requests == [("/files/blob.bin", None)]
    # Already there and matching: no request at all.
    download_file(url, dest, sha256=_sha(PAYLOAD), size=len(PAYLOAD), progress=False)
    assert len(server.state.requests) == 1


def test_download_resumes_a_truncated_part_file_with_a_range_request(server: _Server, tmp_path: Path):
    url = server.serve("/blob.bin", PAYLOAD)
    dest = tmp_path / "blob.bin"
    dest.with_name("blob.bin.part").write_bytes(PAYLOAD[:123_456])  # left by an interrupted run
    download_file(url, dest, sha256=_sha(PAYLOAD), size=len(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.state.requests == [("/blob.bin", "bytes=123456-")]


def test_dropped_connection_is_resumed_within_the_same_call(server: _Server, tmp_path: Path):
    url = server.serve("/blob.bin", PAYLOAD)
    server.state.cut_after["/blob.bin"] = [100_000]  # the first response stops after 100 kB
    dest = tmp_path / "blob.bin"
    download_file(url, dest, sha256=_sha(PAYLOAD), size=len(PAYLOAD), progress=False, retry_wait=0)
    assert dest.read_bytes() == PAYLOAD
    assert server.state.requests == [("/blob.bin", None), ("/blob.bin", "bytes=100000-")]


def test_server_ignoring_range_restarts_from_zero(server: _Server, tmp_path: Path):
    url = server.serve("/blob.bin", PAYLOAD)
    server.state.ignore_range = True
    dest = tmp_path / "blob.bin"
    dest.with_name("blob.bin.part").write_bytes(PAYLOAD[:5000])
    download_file(url, dest, sha256=_sha(PAYLOAD), size=len(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD  # not the 5000 bytes twice


def test_a_complete_part_file_is_verified_without_downloading_again(server: _Server, tmp_path: Path):
    url = server.serve("/blob.bin", PAYLOAD)
    dest = tmp_path / "blob.bin"
    dest.with_name("blob.bin.part").write_bytes(PAYLOAD)
    download_file(url, dest, sha256=_sha(PAYLOAD), size=len(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.state.requests == []
    # Size unknown: the server answers 416 for a range at the end, and the part is complete.
    dest.rename(dest.with_name("blob.bin.part"))
    download_file(url, dest, sha256=_sha(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.state.requests == [("/blob.bin", f"bytes={len(PAYLOAD)}-")]


def test_checksum_mismatch_deletes_the_bytes_and_names_url_and_digests(server: _Server, tmp_path: Path):
    url = server.serve("/blob.bin", PAYLOAD)
    wrong = _sha(b"something else")
    dest = tmp_path / "blob.bin"
    with pytest.raises(DownloadError) as info:
        download_file(url, dest, sha256=wrong, size=len(PAYLOAD), progress=False)
    message = str(info.value)
    assert url in message and wrong in message and _sha(PAYLOAD) in message and "run again" in message
    assert not dest.exists() and not dest.with_name("blob.bin.part").exists()


def test_size_mismatch_is_refused_before_reading_the_body(server: _Server, tmp_path: Path):
    url = server.serve("/blob.bin", PAYLOAD)
    with pytest.raises(DownloadError, match=rf"is {len(PAYLOAD)} bytes but 1000 were expected"):
        download_file(url, tmp_path / "blob.bin", sha256=_sha(PAYLOAD), size=1000, progress=False)
    assert not (tmp_path / "blob.bin").exists()


def test_a_stale_published_file_is_replaced(server: _Server, tmp_path: Path):
    url = server.serve("/blob.bin", PAYLOAD)
    dest = tmp_path / "blob.bin"
    dest.write_bytes(b"stale bytes from an older server file")
    download_file(url, dest, sha256=_sha(PAYLOAD), size=len(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_retries_are_bounded_and_the_part_file_keeps_what_arrived(server: _Server, tmp_path: Path):
    url = server.serve("/blob.bin", PAYLOAD)
    server.state.cut_after["/blob.bin"] = [1000] * 10  # every response dies after 1000 bytes
    dest = tmp_path / "blob.bin"
    with pytest.raises(DownloadError, match=r"could not be downloaded in 3 attempts.*resumes"):
        download_file(url, dest, sha256=_sha(PAYLOAD), size=len(PAYLOAD), progress=False, attempts=3, retry_wait=0)
    assert [r for _, r in server.state.requests] == [None, "bytes=1000-", "bytes=2000-"]
    assert dest.with_name("blob.bin.part").read_bytes() == PAYLOAD[:3000]
    assert not dest.exists()


def test_http_error_names_the_url_and_status(server: _Server, tmp_path: Path):
    with pytest.raises(DownloadError, match=r"/missing\.zip answered HTTP 404"):
        download_file(server.url("/missing.zip"), tmp_path / "missing.zip", sha256="0" * 64, progress=False)
    assert len(server.state.requests) == 1  # a 404 is not retried


def test_pinned_values_are_validated(tmp_path: Path):
    with pytest.raises(ConfigError, match="64 lowercase hex"):
        RemoteArchive(url="http://example.org/a.zip", filename="a.zip", sha256="abc")
    with pytest.raises(ConfigError, match="not http"):
        download_file("ftp://example.org/a.zip", tmp_path / "a.zip", sha256="0" * 64)


def test_default_source_is_the_official_coco_archives():
    assert COCO_VAL2017.images.url == "http://images.cocodataset.org/zips/val2017.zip"
    assert COCO_VAL2017.annotations.url == "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"
    assert COCO_VAL2017.images.size and COCO_VAL2017.annotations.size  # sizes are checked, not only digests


# --------------------------------------------------------------------------------------------
# extract_archive


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_extract_only_the_requested_members(tmp_path: Path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip_bytes({"val2017/1.jpg": b"one", "val2017/2.jpg": b"two", "other/x": b"x"}))
    made = extract_archive(archive, tmp_path / "out", ["val2017/2.jpg"])
    assert made == [(tmp_path / "out" / "val2017" / "2.jpg").resolve()]
    assert made[0].read_bytes() == b"two"
    assert sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file()) == ["2.jpg"]
    with pytest.raises(DataError, match="has no member 'val2017/3.jpg'"):
        extract_archive(archive, tmp_path / "out", ["val2017/3.jpg"])


@pytest.mark.parametrize("evil", ["../evil.txt", "good/../../evil.txt", "/tmp/qb-evil-absolute.txt", "C:/evil.txt"])
def test_zip_member_escaping_the_destination_is_refused_and_nothing_is_written(tmp_path: Path, evil: str):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(_zip_bytes({"fine.txt": b"ok", evil: b"owned"}))
    dest = tmp_path / "deep" / "out"
    with pytest.raises(UnsafeArchiveError, match=re.escape(repr(evil))):
        extract_archive(archive, dest)
    assert not (tmp_path / "deep" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not Path("/tmp/qb-evil-absolute.txt").exists()
    assert list(dest.iterdir()) == []  # refused before anything was extracted


def test_zip_symlink_member_is_refused(tmp_path: Path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        link = zipfile.ZipInfo("val2017/link.jpg")
        link.external_attr = (0o120777 << 16)  # S_IFLNK: what `zip --symlinks` records
        zf.writestr(link, "/etc/passwd")
    archive = tmp_path / "links.zip"
    archive.write_bytes(buf.getvalue())
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        extract_archive(archive, tmp_path / "out")


def _tar_with(tmp_path: Path, *infos: tuple[tarfile.TarInfo, bytes | None]) -> Path:
    path = tmp_path / "a.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for info, data in infos:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def test_tar_extracts_inside_and_refuses_escaping_links_and_paths(tmp_path: Path):
    good = tarfile.TarInfo("data/a.txt")
    inner_link = tarfile.TarInfo("data/b.txt")
    inner_link.type, inner_link.linkname = tarfile.SYMTYPE, "a.txt"
    made = extract_archive(_tar_with(tmp_path, (good, b"hello"), (inner_link, None)), tmp_path / "ok")
    assert [p.read_bytes() for p in made] == [b"hello"]
    assert (tmp_path / "ok" / "data" / "b.txt").read_bytes() == b"hello"

    escaping = tarfile.TarInfo("data/link")
    escaping.type, escaping.linkname = tarfile.SYMTYPE, "../../outside"
    with pytest.raises(UnsafeArchiveError, match="links to '../../outside'"):
        extract_archive(_tar_with(tmp_path, (good, b"x"), (escaping, None)), tmp_path / "t1")
    absolute = tarfile.TarInfo("data/abs")
    absolute.type, absolute.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(UnsafeArchiveError, match="links to '/etc/passwd'"):
        extract_archive(_tar_with(tmp_path, (absolute, None)), tmp_path / "t2")
    with pytest.raises(UnsafeArchiveError, match="'../evil'"):
        extract_archive(_tar_with(tmp_path, (tarfile.TarInfo("../evil"), b"x")), tmp_path / "t3")
    assert not (tmp_path / "evil").exists() and not (tmp_path / "t1" / "data").exists()


def test_not_an_archive_is_a_data_error(tmp_path: Path):
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"<html>captive portal</html>")
    with pytest.raises(DataError, match="neither a zip nor a tar"):
        extract_archive(junk, tmp_path / "out")


# --------------------------------------------------------------------------------------------
# COCO subsets


def test_choose_subset_is_seeded_and_eval_and_calib_never_overlap():
    ids = list(range(1000, 1100))
    for n_eval, n_calib in [(10, 10), (50, 50), (3, 47)]:
        ev = choose_subset(ids, "eval", n_eval, seed=0)
        ca = choose_subset(ids, "calib", n_calib, seed=0)
        assert len(ev) == n_eval and len(ca) == n_calib
        assert not set(ev) & set(ca)
        assert list(ev) == sorted(ev) and set(ev) <= set(ids)
    assert choose_subset(ids, "eval", 10, seed=0) == choose_subset(list(reversed(ids)), "eval", 10, seed=0)
    assert choose_subset(ids, "eval", 10, seed=0) != choose_subset(ids, "eval", 10, seed=1)
    # A bigger subset extends the smaller one (same permutation): growing N keeps earlier images.
    assert set(choose_subset(ids, "calib", 5)) <= set(choose_subset(ids, "calib", 20))
    with pytest.raises(ConfigError, match="ask for 1 to 50"):
        choose_subset(ids, "eval", 51)
    with pytest.raises(ConfigError, match="role 'train' is unknown"):
        choose_subset(ids, "train", 5)


NUM_FAKE_IMAGES = 12


def _jpeg(seed: int) -> bytes:
    img = np.random.default_rng(seed).integers(0, 256, size=(24 + seed, 32, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


def _coco_archives(file_names: dict[int, str] | None = None) -> tuple[bytes, bytes, dict]:
    """(val2017.zip bytes, annotations zip bytes, instances dict) in the official layout."""
    ids = [139 + 7 * i for i in range(NUM_FAKE_IMAGES)]
    file_names = file_names or {}
    images = [{"id": i, "file_name": file_names.get(i, f"{i:012d}.jpg"), "width": 32, "height": 24 + k}
              for k, i in enumerate(ids)]
    annotations = [
        {"id": 10 * i + j, "image_id": i, "category_id": 1 + j, "bbox": [1.0, 2.0, 5.0, 6.0], "area": 30.0,
         "iscrowd": 0}
        for i in ids for j in range(i % 3)  # 0, 1 or 2 boxes per image
    ]
    instances = {"info": {"description": "fake val2017"}, "licenses": [{"id": 1, "name": "x"}],
                 "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}],
                 "images": images, "annotations": annotations}
    images_zip = _zip_bytes({f"val2017/{img['file_name']}": _jpeg(k) for k, img in enumerate(images)}
                            | {"val2017/": b""})
    annotations_zip = _zip_bytes({"annotations/instances_val2017.json": json.dumps(instances).encode(),
                                  "annotations/captions_val2017.json": b"{}"})
    return images_zip, annotations_zip, instances


def _source(server: _Server, images_zip: bytes, annotations_zip: bytes, *, images_sha: str | None = None) -> CocoSource:
    return CocoSource(
        name="fake-val2017",
        images=RemoteArchive(url=server.serve("/zips/val2017.zip", images_zip), filename="val2017.zip",
                             sha256=images_sha or _sha(images_zip), size=len(images_zip)),
        annotations=RemoteArchive(url=server.serve("/annotations/annotations_trainval2017.zip", annotations_zip),
                                  filename="annotations_trainval2017.zip", sha256=_sha(annotations_zip),
                                  size=len(annotations_zip)),
    )


def test_coco_subsets_are_valid_disjoint_coco_folders_built_once(server: _Server, tmp_path: Path):
    from pycocotools.coco import COCO

    images_zip, annotations_zip, instances = _coco_archives()
    source = _source(server, images_zip, annotations_zip)
    root = tmp_path / "cache"
    eval_dir = fetch_coco_subset("eval", root=root, num_images=4, seed=0, source=source, progress=False)
    calib_dir = fetch_coco_subset("calib", root=root, num_images=5, seed=0, source=source, progress=False)
    assert eval_dir == subset_folder(root, source, "eval", 4, 0) == root / "datasets" / "fake-val2017-eval4-seed0"
    # Each archive was downloaded once and kept for the second subset.
    assert sorted(p for p, _ in server.state.requests) == ["/annotations/annotations_trainval2017.zip",
                                                           "/zips/val2017.zip"]
    originals = {info.filename: zipfile.ZipFile(io.BytesIO(images_zip)).read(info)
                 for info in zipfile.ZipFile(io.BytesIO(images_zip)).infolist()}
    chosen = {}
    for folder, n in [(eval_dir, 4), (calib_dir, 5)]:
        assert sorted(p.name for p in folder.iterdir()) == ["images", "instances.json"]  # nothing else left
        data = json.loads((folder / "instances.json").read_text())
        ids = {img["id"] for img in data["images"]}
        assert len(ids) == n
        assert {a["image_id"] for a in data["annotations"]} <= ids
        assert [a for a in instances["annotations"] if a["image_id"] in ids] == data["annotations"]
        assert data["categories"] == instances["categories"]
        files = sorted(p.name for p in (folder / "images").iterdir())
        assert files == sorted(img["file_name"] for img in data["images"])
        for name in files:
            assert (folder / "images" / name).read_bytes() == originals[f"val2017/{name}"]
        coco = COCO(str(folder / "instances.json"))  # pycocotools reads it
        assert sorted(coco.getImgIds()) == sorted(ids)
        chosen[folder] = ids
    assert not chosen[eval_dir] & chosen[calib_dir]
    assert chosen[eval_dir] == set(choose_subset([i["id"] for i in instances["images"]], "eval", 4, 0))

    # Published: a second call returns it without any request.
    before = len(server.state.requests)
    assert fetch_coco_subset("eval", root=root, num_images=4, seed=0, source=source, progress=False) == eval_dir
    assert len(server.state.requests) == before


def test_coco_subset_with_a_malicious_file_name_is_refused_and_nothing_is_published(server: _Server, tmp_path: Path):
    # Every image id lands in one of the halves; make all names hostile so any choice hits one.
    ids = [139 + 7 * i for i in range(NUM_FAKE_IMAGES)]
    images_zip, annotations_zip, _ = _coco_archives({i: f"../../escape{i}.jpg" for i in ids})
    source = _source(server, images_zip, annotations_zip)
    root = tmp_path / "cache"
    with pytest.raises(UnsafeArchiveError, match=r"escape\d+\.jpg"):
        fetch_coco_subset("eval", root=root, num_images=3, source=source, progress=False)
    datasets = root / "datasets"
    assert [p.name for p in datasets.iterdir() if not p.name.endswith(".lock")] == []  # no staging left
    assert not list(tmp_path.rglob("escape*.jpg"))


def test_coco_subset_with_a_corrupted_archive_publishes_nothing(server: _Server, tmp_path: Path):
    images_zip, annotations_zip, _ = _coco_archives()
    source = _source(server, images_zip, annotations_zip, images_sha=_sha(b"the published val2017.zip"))
    root = tmp_path / "cache"
    with pytest.raises(DownloadError, match=r"val2017\.zip has sha256"):
        fetch_coco_subset("calib", root=root, num_images=3, source=source, progress=False)
    assert not subset_folder(root, source, "calib", 3, 0).exists()
    assert not (root / "downloads" / "val2017.zip").exists()
    assert [p.name for p in (root / "datasets").iterdir() if not p.name.endswith(".lock")] == []


def test_coco_subset_too_big_for_its_half_is_a_config_error(server: _Server, tmp_path: Path):
    images_zip, annotations_zip, _ = _coco_archives()
    source = _source(server, images_zip, annotations_zip)
    with pytest.raises(ConfigError, match=f"ask for 1 to {NUM_FAKE_IMAGES // 2}"):
        fetch_coco_subset("eval", root=tmp_path, num_images=NUM_FAKE_IMAGES, source=source, progress=False)


def test_default_data_without_assets_downloads_into_the_user_cache(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv(assets.ASSETS_ENV, raising=False)
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "user-cache"))
    images_zip, annotations_zip, _ = _coco_archives()
    source = _source(server, images_zip, annotations_zip)
    eval_dir = assets.default_eval_data(num_images=3, source=source, progress=False)
    calib_dir = assets.default_calib_data(num_images=3, source=source, progress=False)
    assert eval_dir.parent == calib_dir.parent == tmp_path / "user-cache" / "datasets"
    assert (tmp_path / "user-cache" / "downloads" / "val2017.zip").read_bytes() == images_zip
    eval_ids = {i["id"] for i in json.loads((eval_dir / "instances.json").read_text())["images"]}
    calib_ids = {i["id"] for i in json.loads((calib_dir / "instances.json").read_text())["images"]}
    assert len(eval_ids) == len(calib_ids) == 3 and not eval_ids & calib_ids


def test_downloaded_subset_loads_as_a_dataset(server: _Server, tmp_path: Path):
    images_zip, annotations_zip, _ = _coco_archives()
    folder = fetch_coco_subset("eval", root=tmp_path, num_images=5, source=_source(server, images_zip, annotations_zip),
                               progress=False)
    ds = CocoDataset.load(folder)
    assert len(ds.image_ids) == 5 and all(p.is_file() for p in ds.files)
    assert ds.category_ids == (1, 2)
