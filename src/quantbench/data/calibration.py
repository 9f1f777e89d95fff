"""Calibration tensors for INT8 PTQ: a seeded choice of N images, preprocessed, cached as ``.npy``.

The images go through `quantbench.data.preprocess.load_image`, the very function evaluation uses, so
calibration sees exactly the letterboxed RGB/255 inputs the accuracy gate measures. The tensor is
cached under ``calibration/<key>.npy`` where the key hashes the chosen files' bytes, the seed, the
input size and N: renaming or moving the folder reuses it, editing an image rebuilds it.
"""

from __future__ import annotations

import errno
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from quantbench.cache import ArtifactCache, hash_key, no_space_error, sha256_file
from quantbench.data.dataset import list_images
from quantbench.data.preprocess import IMGSZ, load_image, quiet_decoders
from quantbench.errors import ConfigError, DataError

log = logging.getLogger(__name__)

CACHE_KIND = "calibration"
# Part of every cache key: bump it when the tensor layout or the meaning of a key part changes.
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class CalibrationSet:
    """A cached calibration tensor and what it was made from."""

    path: Path  # the .npy inside the cache
    sha256: str  # of the .npy file: identifies the tensor in quantized-variant cache keys
    num_images: int
    files: tuple[str, ...]  # chosen image files, relative to the image folder, sorted
    seed: int
    size: int  # square input side

    def load(self) -> np.ndarray:
        """The ``(N, 3, size, size)`` float32 tensor (RGB, 0..1, letterboxed)."""
        array = np.load(self.path, allow_pickle=False)
        expected = (self.num_images, 3, self.size, self.size)
        if array.shape != expected or array.dtype != np.float32:
            raise DataError(
                f"{self.path} holds a {array.dtype} array of shape {array.shape}, not float32 {expected}; delete it "
                "so the calibration tensor is rebuilt."
            )
        return array


def calibration_images(folder: Path) -> tuple[Path, list[Path]]:
    """The image folder of ``folder`` (its ``images/`` for a COCO folder, else itself) and its sorted images."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"calibration folder {folder} is a file, not a folder; pass a COCO folder "
                        "(images/ + instances.json) or a folder of images.")
    if not folder.is_dir():
        raise DataError(
            f"calibration folder {folder} does not exist; pass a COCO folder (images/ + instances.json) or a "
            "folder of images."
        )
    images_dir = folder / "images" if (folder / "images").is_dir() else folder
    return images_dir, sorted(list_images(images_dir))


def check_calibration_folder(folder: Path, num_images: int, *, seed: int = 0) -> list[Path]:
    """The images `build_calibration` would use, each decoded once, or one sentence on what is wrong.

    For a start-up check (the bench, before any build): a missing or empty folder, too few images
    for ``num_images``, or a chosen image OpenCV cannot decode fails here rather than minutes later
    inside a ModelOpt build. Counts and seed are checked as `choose_images` does.
    """
    images_dir, files = calibration_images(folder)
    chosen = choose_images(files, num_images, seed, images_dir)
    with quiet_decoders:
        unreadable = [p for p in chosen if _undecodable(p)]
    if unreadable:
        raise DataError(
            f"calibration folder {images_dir}: {len(unreadable)} of the {len(chosen)} chosen images cannot be decoded "
            f"(first: {unreadable[0].name}); replace or remove them, or choose another --seed."
        )
    return chosen


def _undecodable(path: Path) -> bool:
    try:
        load_image(path, 32)  # the decoder calibration uses; a small size keeps the check cheap
    except DataError:
        return True
    return False


def choose_images(files: list[Path], num_images: int, seed: int, folder: Path) -> list[Path]:
    """Seeded choice of ``num_images`` of the sorted ``files``, without replacement, returned sorted."""
    if num_images < 1:
        raise ConfigError(f"{num_images} calibration images asked for; ask for at least 1.")
    if num_images > len(files):
        raise ConfigError(
            f"{num_images} calibration images asked for but {folder} holds only {len(files)}; ask for at most "
            f"{len(files)} or add images."
        )
    if seed < 0:
        raise ConfigError(f"calibration seed {seed} is negative; give a seed of 0 or more.")
    picked = np.random.default_rng(seed).choice(len(files), size=num_images, replace=False)
    return [files[i] for i in sorted(picked.tolist())]


def build_calibration(
    folder: Path,
    num_images: int,
    *,
    cache: ArtifactCache,
    seed: int = 0,
    size: int = IMGSZ,
    progress: bool = False,
) -> CalibrationSet:
    """Choose ``num_images`` images of ``folder`` with ``seed``, preprocess them, cache the stack.

    ``folder`` is a COCO folder (its ``images/`` is used) or a plain folder of images. Asking for
    more images than the folder holds raises `ConfigError` rather than quietly calibrating on fewer;
    an unreadable chosen image raises `DataError` (skipping it would silently change the set).
    """
    if size < 1:
        raise ConfigError(f"calibration input size {size} is not positive; use the model's input size, e.g. 640.")
    images_dir, files = calibration_images(folder)
    chosen = choose_images(files, num_images, seed, images_dir)
    names = tuple(p.relative_to(images_dir).as_posix() for p in chosen)
    key = hash_key(CACHE_KIND, _FORMAT_VERSION, cache.file_digests(chosen), seed, size, num_images)

    def build(tmp: Path) -> dict:
        try:
            return write(tmp)
        except OSError as exc:  # get_or_build removes the temporary file: nothing half-written is published
            raise no_space_error(exc, cache.path_for(CACHE_KIND, key, ".npy")) or exc from None

    def write(tmp: Path) -> dict:
        log.info("preprocessing %d calibration images from %s", num_images, images_dir)
        # Written row by row into a memory-mapped .npy: 500 images at 640 are 2.4 GB. The file's
        # blocks are reserved first: a full disk then fails here with ENOSPC, not with SIGBUS when
        # a page of the (otherwise sparse) map is written.
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(num_images, 3, size, size))
        _reserve(tmp)
        workers = max(1, min(4, os.cpu_count() or 1))
        with quiet_decoders, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="qb-calib") as pool:
            rows = pool.map(lambda p: load_image(p, size)[0], chosen)
            for i, row in enumerate(tqdm(rows, total=num_images, desc="calibration", unit="img", disable=not progress)):
                out[i] = row
        out.flush()
        del out  # close the map before the cache renames the file
        return {"sha256": sha256_file(tmp), "files": list(names), "seed": seed, "size": size,
                "num_images": num_images, "folder": str(images_dir)}

    entry = cache.get_or_build(CACHE_KIND, key, ".npy", build)
    return CalibrationSet(path=entry.path, sha256=entry.meta["sha256"], num_images=num_images, files=names,
                          seed=seed, size=size)


def _reserve(path: Path) -> None:
    """Allocate the blocks of sparse file ``path``, as long as it is (ENOSPC now rather than SIGBUS later); filesystems
    without fallocate (some network ones) are left to fail on the writes themselves."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    finally:
        os.close(fd)
