"""Resumable, checksummed, atomic downloads; safe archive extraction; COCO val2017 subsets.

Used only when no offline assets folder is configured (see `quantbench.data.assets`). Everything is
written inside the cache root the caller passes in, never beside an input:

- ``<root>/downloads/<file>``: an archive, published by ``os.replace`` only once its size and
  sha256 match; while it downloads the bytes live in ``<file>.part`` and a later call resumes
  from there with an HTTP ``Range`` request.
- ``<root>/datasets/<source>-<role><N>-seed<S>/``: a COCO-format folder (``images/`` +
  ``instances.json``) built in a private staging folder and published by renaming it.

Only the standard library talks to the network (``urllib``), so proxies configured through the
usual ``http_proxy``/``https_proxy``/``no_proxy`` variables apply.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
from filelock import FileLock
from tqdm import tqdm

from quantbench import __version__
from quantbench.cache import atomic_write_json, sha256_file
from quantbench.errors import ConfigError, DataError, DownloadError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class UnsafeArchiveError(DownloadError):
    """An archive member would land outside the extraction folder (absolute path, ``..``, link)."""


@dataclass(frozen=True)
class RemoteArchive:
    """One file on a server, pinned by its size and sha256 so a changed or corrupted file is caught."""

    url: str
    filename: str  # name of the published file inside the downloads folder
    sha256: str
    size: int | None = None  # bytes; None when the publisher states none

    def __post_init__(self) -> None:
        if not _SHA256_HEX.fullmatch(self.sha256):
            raise ConfigError(
                f"sha256 {self.sha256!r} for {self.url} is not 64 lowercase hex digits; pin the file's real sha256."
            )
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"URL {self.url!r} is not http(s); give an http:// or https:// address.")
        if not self.filename or PurePosixPath(self.filename).name != self.filename:
            raise ConfigError(f"file name {self.filename!r} for {self.url} must be a bare file name without folders.")


@dataclass(frozen=True)
class CocoSource:
    """Where a COCO split comes from: its image archive, its annotation archive, and the members used."""

    name: str  # unique per source: part of the subset folder names
    images: RemoteArchive
    annotations: RemoteArchive
    images_prefix: str = "val2017/"  # folder of the images inside the image archive
    annotations_member: str = "annotations/instances_val2017.json"


# The official COCO archives. COCO publishes no checksums of its own; the sizes and sha256 digests
# are the ones TensorFlow Datasets pins in tensorflow/datasets
# `tensorflow_datasets/url_checksums/coco.txt` (val2017.zip 815585330 bytes, 4f7e2ccb...;
# annotations_trainval2017.zip 252907541 bytes, 113a836d...). The md5 digests other downloaders pin,
# e.g. intel/neural-compressor `examples/pytorch/fx/object_detection/maskrcnn/download_dataset.sh`
# (val2017.zip 442b8da7639aecaf257c1dceb8ba8c80, annotations f4bbac642086de4f52a3fdda2de5fa2c),
# name the same files; sha256 is checked here because it is the stronger digest.
COCO_VAL2017 = CocoSource(
    name="coco-val2017",
    images=RemoteArchive(
        url="http://images.cocodataset.org/zips/val2017.zip",
        filename="val2017.zip",
        sha256="4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05",
        size=815_585_330,
    ),
    annotations=RemoteArchive(
        url="http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
        filename="annotations_trainval2017.zip",
        sha256="113a836d90195ee1f884e704da6304dfaaecff1f023f49b6ca93c4aaae470268",
        size=252_907_541,
    ),
)


# ---------------------------------------------------------------------------------------------
# Downloads


class _Retryable(Exception):
    """A transient failure (connection dropped, timeout, 5xx): the next attempt resumes the .part."""


def download_file(
    url: str,
    dest: Path,
    *,
    sha256: str,
    size: int | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    attempts: int = 5,
    retry_wait: float = 2.0,
) -> Path:
    """Download ``url`` to ``dest`` unless ``dest`` already holds the pinned bytes; return ``dest``.

    Bytes go to ``dest.part`` first; an interrupted download (this call's earlier attempt or an
    earlier process) resumes with ``Range: bytes=<part size>-``. ``dest`` appears, through
    ``os.replace``, only once the size and sha256 match. A checksum mismatch deletes the bytes and
    raises `DownloadError`; a server that keeps failing raises it after ``attempts`` tries.
    """
    archive = RemoteArchive(url=url, filename=Path(dest).name, sha256=sha256, size=size)  # validates
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    # One writer per file: two processes appending to the same .part would corrupt it.
    with FileLock(str(dest) + ".lock"):
        if dest.exists():
            if _holds(dest, archive):
                return dest
            log.warning("%s does not match its pinned size/sha256: downloading it again.", dest)
            dest.unlink()
        last_error = ""
        for attempt in range(1, attempts + 1):
            try:
                _fetch_into(archive, part, progress=progress, timeout=timeout)
                break
            except _Retryable as exc:
                last_error = str(exc)
                log.warning("download of %s failed (attempt %d of %d): %s", url, attempt, attempts, exc)
                if attempt < attempts:
                    time.sleep(retry_wait * attempt)
        else:
            raise DownloadError(
                f"{url} could not be downloaded in {attempts} attempts (last: {last_error}); check the "
                f"network and run again: the download resumes from {part}."
            )
        actual = sha256_file(part)
        if actual != sha256:
            part.unlink()
            raise DownloadError(
                f"{url} has sha256 {actual} but {sha256} was expected; the bytes were deleted: run again, "
                "and if it fails again the server's file changed, so check the URL or update the pinned checksum."
            )
        os.replace(part, dest)
    return dest


def fetch_remote(archive: RemoteArchive, folder: Path, *, progress: bool = True) -> Path:
    """`download_file` for a pinned `RemoteArchive` into ``folder``."""
    return download_file(archive.url, folder / archive.filename, sha256=archive.sha256, size=archive.size,
                         progress=progress)


def _holds(path: Path, archive: RemoteArchive) -> bool:
    if archive.size is not None and path.stat().st_size != archive.size:
        return False
    return sha256_file(path) == archive.sha256


def _fetch_into(archive: RemoteArchive, part: Path, *, progress: bool, timeout: float) -> None:
    """One request: append to ``part`` from where it stops (or start over). Raises _Retryable."""
    expected = archive.size
    offset = part.stat().st_size if part.exists() else 0
    if expected is not None and offset > expected:
        part.unlink()  # longer than the file can be: not a prefix of it
        offset = 0
    if expected is not None and offset == expected:
        return  # every byte is there; the checksum decides
    response = _open_from(archive.url, offset, part, timeout)
    if response is None:
        return
    with response:
        total, mode, offset = _body_range(archive, response, offset, part)
        received = _copy_body(archive, response, part, mode=mode, offset=offset, total=total, progress=progress)
    if expected is not None and received > expected:
        part.unlink()
        raise DownloadError(
            f"{archive.url} sent more than the {expected} bytes expected; the bytes were deleted: check the URL or "
            "update the pinned size and checksum."
        )
    if total is not None and received < total:
        raise _Retryable(f"connection closed after {received} of {total} bytes")


def _open_from(url: str, offset: int, part: Path, timeout: float):
    """The response for the bytes from ``offset`` on; None when the .part already holds the whole file."""
    headers = {"User-Agent": f"quantbench/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # The .part reaches (or passes) the end of the file: let the checksum decide, or start over.
            if _total_from_unsatisfied_range(exc.headers.get("Content-Range")) == offset:
                return None
            part.unlink()
            raise _Retryable(f"HTTP 416 for a range from byte {offset}; starting over") from None
        if exc.code in (408, 425, 429) or exc.code >= 500:
            raise _Retryable(f"HTTP {exc.code} {exc.reason}") from None
        raise DownloadError(
            f"{url} answered HTTP {exc.code} {exc.reason}; check the URL (and any proxy settings) and run again."
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _Retryable(f"{type(exc).__name__}: {exc}") from None


def _body_range(archive: RemoteArchive, response, offset: int, part: Path) -> tuple[int | None, str, int]:
    """(total file size or None, file mode, offset) of what the response body holds."""
    if offset and response.status == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
        if match is None or int(match[1]) != offset:
            part.unlink()
            sent = response.headers.get("Content-Range")
            raise _Retryable(f"server sent range {sent!r} for bytes={offset}-; starting over")
        total, mode = (None if match[3] == "*" else int(match[3])), "ab"
    else:
        # 200: the server ignored the Range header (or there was none): the body is the whole file.
        length = response.headers.get("Content-Length")
        total, mode, offset = (int(length) if length and length.isdigit() else None), "wb", 0
    if archive.size is not None and total is not None and total != archive.size:
        raise DownloadError(
            f"{archive.url} is {total} bytes but {archive.size} were expected; the server's file changed: check the "
            "URL or update the pinned size and checksum."
        )
    return total, mode, offset


def _copy_body(archive: RemoteArchive, response, part: Path, *, mode: str, offset: int, total: int | None,
               progress: bool) -> int:
    """Write the body to ``part``, never past the pinned size; the byte count reached."""
    expected, received = archive.size, offset
    with open(part, mode) as out, tqdm(
        total=total or expected, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
        desc=archive.filename, disable=not progress,
    ) as bar:
        try:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
                if expected is not None and received > expected:
                    break  # bounded: never read past the pinned size
        except (OSError, http.client.HTTPException) as exc:
            raise _Retryable(f"connection lost after {received} bytes ({type(exc).__name__})") from None
    return received


def _total_from_unsatisfied_range(header: str | None) -> int | None:
    match = re.fullmatch(r"bytes \*/(\d+)", header or "")
    return int(match[1]) if match else None


# ---------------------------------------------------------------------------------------------
# Safe extraction


def extract_archive(archive: Path, dest: Path, members: Iterable[str] | None = None) -> list[Path]:
    """Extract ``members`` (default: all) of a zip or tar archive into ``dest``; return the files made.

    Every selected member is checked before anything is written: an absolute path, a ``..``
    component, a drive letter, or a link that resolves outside ``dest`` raises
    `UnsafeArchiveError` and nothing is extracted.
    """
    archive, dest = Path(archive), Path(dest)
    wanted = None if members is None else list(members)
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        return _extract_zip(archive, dest, wanted)
    if tarfile.is_tarfile(archive):
        return _extract_tar(archive, dest, wanted)
    raise DataError(f"{archive} is neither a zip nor a tar archive; delete it so it is downloaded again.")


def _refuse(archive: Path, name: str, why: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(
        f"{archive} member {name!r} {why}, outside the extraction folder; the archive is refused: delete it and "
        "get it from a trusted source."
    )


def _safe_target(dest: Path, name: str, archive: Path) -> Path:
    """The path ``name`` extracts to, after refusing names that could leave ``dest``."""
    posix = name.replace("\\", "/")
    if not posix or posix.startswith("/") or PureWindowsPath(name).drive or ".." in PurePosixPath(posix).parts:
        raise _refuse(archive, name, "has an absolute or parent-relative path")
    root = dest.resolve()
    target = (root / posix).resolve()  # resolve() also follows links already inside dest
    if target != root and not target.is_relative_to(root):
        raise _refuse(archive, name, f"resolves to {target}")
    return target


def _link_stays_inside(dest: Path, name: str, linkname: str, archive: Path, *, hard: bool) -> None:
    """Refuse a tar link whose target (relative to the link's folder; to the root for hard links) leaves dest."""
    base = "" if hard else os.path.dirname(name.replace("\\", "/"))
    joined = os.path.normpath(os.path.join(base, linkname))
    if linkname.startswith("/") or PureWindowsPath(linkname).drive or joined == ".." or joined.startswith("../"):
        raise _refuse(archive, name, f"links to {linkname!r}")


def _extract_zip(archive: Path, dest: Path, wanted: list[str] | None) -> list[Path]:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist() if wanted is None else [_member(zf.getinfo, name, archive) for name in wanted]
            plan = []
            for info in infos:
                target = _safe_target(dest, info.filename, archive)
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise UnsafeArchiveError(
                        f"{archive} holds symbolic link {info.filename!r}; links are not extracted, so the archive "
                        "is refused: delete it and get it from a trusted source."
                    )
                plan.append((info, target))
            made = []
            for info, target in plan:
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
                made.append(target)
            return made
    except zipfile.BadZipFile as exc:
        raise DataError(f"{archive} is a damaged zip archive ({exc}); delete it so it is downloaded again.") from None


def _member(lookup, name: str, archive: Path):
    """``lookup(name)`` (ZipFile.getinfo or TarFile.getmember), a missing member as one DataError."""
    try:
        return lookup(name)
    except KeyError:
        raise DataError(f"{archive} has no member {name!r}; check the archive is the one expected.") from None


def _extract_tar(archive: Path, dest: Path, wanted: list[str] | None) -> list[Path]:
    try:
        with tarfile.open(archive) as tf:
            infos = tf.getmembers() if wanted is None else [_member(tf.getmember, name, archive) for name in wanted]
            for info in infos:
                _safe_target(dest, info.name, archive)
                if info.issym() or info.islnk():
                    _link_stays_inside(dest, info.name, info.linkname, archive, hard=info.islnk())
                elif not (info.isfile() or info.isdir()):
                    raise _refuse(archive, info.name, "is a device or pipe, which has no place")
            # The stdlib's "data" filter (Python >= 3.11.4 / 3.10.12) re-checks paths, links and modes.
            if hasattr(tarfile, "data_filter"):
                tf.extractall(dest, members=infos, filter="data")
            else:
                tf.extractall(dest, members=infos)
            return [(dest / info.name).resolve() for info in infos if info.isfile()]
    except tarfile.FilterError as exc:
        raise UnsafeArchiveError(f"{archive} was refused by tarfile's data filter ({exc}); delete it and get it "
                                 "from a trusted source.") from None
    except tarfile.TarError as exc:
        raise DataError(f"{archive} is a damaged tar archive ({exc}); delete it so it is downloaded again.") from None


# ---------------------------------------------------------------------------------------------
# COCO subsets


class SubsetRole(str, Enum):
    """Which half of the seeded permutation a subset is drawn from: the two never share an image."""

    EVAL = "eval"
    CALIB = "calib"


def choose_subset(image_ids: Sequence[int], role: SubsetRole | str, num_images: int, seed: int = 0) -> tuple[int, ...]:
    """Seeded choice of ``num_images`` ids for ``role``, sorted.

    The sorted ids are permuted with ``numpy.random.default_rng(seed)``; evaluation subsets take the
    first half of that permutation, calibration subsets the second, so an evaluation and a
    calibration subset with the same seed are disjoint whatever their sizes (each at most half).
    """
    role = _role(role)
    half = len(image_ids) // 2
    if num_images < 1 or num_images > half:
        raise ConfigError(
            f"a {role.value} subset of {num_images} images is not possible: each of the eval and calib subsets "
            f"comes from its own half of the {len(image_ids)} source images, so ask for 1 to {half}."
        )
    if seed < 0:
        raise ConfigError(f"seed {seed} is negative; give a seed of 0 or more.")
    permuted = np.random.default_rng(seed).permutation(np.array(sorted(image_ids), dtype=np.int64))
    pool = permuted[:half] if role is SubsetRole.EVAL else permuted[half : 2 * half]
    return tuple(sorted(int(i) for i in pool[:num_images]))


def _role(role: SubsetRole | str) -> SubsetRole:
    try:
        return SubsetRole(role)
    except ValueError:
        raise ConfigError(f"subset role {role!r} is unknown; use one of {[r.value for r in SubsetRole]}.") from None


def subset_folder(root: Path, source: CocoSource, role: SubsetRole | str, num_images: int, seed: int) -> Path:
    """Where `fetch_coco_subset` publishes a subset under the cache ``root``."""
    return Path(root) / "datasets" / f"{source.name}-{_role(role).value}{num_images}-seed{seed}"


def fetch_coco_subset(
    role: SubsetRole | str,
    *,
    root: Path,
    num_images: int = 500,
    seed: int = 0,
    source: CocoSource = COCO_VAL2017,
    progress: bool = True,
) -> Path:
    """A COCO-format folder (``images/`` + ``instances.json``) with a seeded subset of ``source``.

    Downloads the two archives into ``<root>/downloads`` (once; resumable), extracts only the
    chosen images and the instances json into a staging folder, and publishes the subset by
    renaming that folder. A published subset is returned without touching the network.
    """
    role = _role(role)
    final = subset_folder(root, source, role, num_images, seed)
    if (final / "instances.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (final / "instances.json").is_file():  # another process published it meanwhile
            return final
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            _stage_subset(staging, Path(root) / "downloads", source, role, num_images, seed, progress)
            os.replace(staging, final)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
    log.info("published %s (%d images)", final, num_images)
    return final


def _stage_subset(staging: Path, downloads: Path, source: CocoSource, role: SubsetRole, num_images: int, seed: int,
                  progress: bool) -> None:
    """Download (once) and extract the chosen images and their annotations into ``staging``."""
    annotations_zip = fetch_remote(source.annotations, downloads, progress=progress)
    (ann_path,) = extract_archive(annotations_zip, staging / "_annotations", [source.annotations_member])
    coco = _read_instances(ann_path, source)
    chosen = set(choose_subset([img["id"] for img in coco["images"]], role, num_images, seed))
    images = sorted((img for img in coco["images"] if img["id"] in chosen), key=lambda img: img["id"])

    images_zip = fetch_remote(source.images, downloads, progress=progress)
    members = [source.images_prefix + img["file_name"] for img in images]
    extracted = extract_archive(images_zip, staging / "_images", members)
    (staging / "images").mkdir()
    for img, path in zip(images, extracted):
        os.replace(path, staging / "images" / PurePosixPath(img["file_name"]).name)
    subset = {
        "info": {
            **coco.get("info", {}),
            "description": f"{source.name} {role.value} subset: {len(images)} images, seed {seed}",
            "quantbench_subset": {
                "source": source.name, "role": role.value, "seed": seed, "num_images": len(images),
                "images_archive_sha256": source.images.sha256,
                "annotations_archive_sha256": source.annotations.sha256,
            },
        },
        "licenses": coco.get("licenses", []),
        "categories": coco["categories"],
        "images": images,
        "annotations": [a for a in coco["annotations"] if a["image_id"] in chosen],
    }
    atomic_write_json(staging / "instances.json", subset)
    shutil.rmtree(staging / "_annotations")
    shutil.rmtree(staging / "_images")


def _read_instances(path: Path, source: CocoSource) -> dict:
    try:
        coco = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{source.annotations_member} in {source.annotations.url} is not valid JSON ({exc}); "
                        "check the source points at a COCO instances file.") from None
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(coco, dict) or k not in coco]
    if missing:
        raise DataError(f"{source.annotations_member} in {source.annotations.url} lacks {missing}; check the source "
                        "points at a COCO instances file.")
    return coco
