"""Image preprocessing identical to Ultralytics' validation of a fixed-size (640) export.

Ultralytics 8.4 validates in two steps, reproduced here pixel for pixel:

1. ``ultralytics/data/base.py`` ``BaseDataset.load_image``: the long side is resized to ``size``
   with ``cv2.INTER_LINEAR`` (8.4 uses it for shrinking and enlarging alike; releases before 8.1
   used ``INTER_AREA`` to shrink), each side ``min(ceil(side * size / long_side), size)``.
2. ``ultralytics/data/augment.py`` ``LetterBox(scaleup=False)``: the image already has its long
   side at ``size`` so it is only padded, centred, with 114 grey, ``top = round(dh / 2 - 0.1)``,
   ``bottom = round(dh / 2 + 0.1)`` (and the same for left/right).

Then BGR -> RGB, HWC -> CHW, ``/ 255`` in float32. Boxes go back to original pixels the way the
validator does it (``ops.scale_boxes`` with the dataset's ``ratio_pad``: per-axis gains
``resized / original`` and integer left/top padding, then clipping to the image).

Decoding uses OpenCV in a thread pool, one thread per core: ``cv2.imread``/``cv2.resize`` and
numpy's division release the GIL, so decoding runs alongside inference and scales with cores;
batches come out in input order.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import re
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np

from quantbench.errors import DataError
from quantbench.stage_clock import Stage, StageClock

IMGSZ = 640
PAD_VALUE = 114

UNREADABLE = "unreadable"
SIZE_MISMATCH = "size differs from the annotations"


class SkipReason(str):
    """Why an image was skipped: the sentence (it is the string) and its ``kind``, for counting."""

    kind: str

    def __new__(cls, message: str, kind: str) -> SkipReason:
        reason = super().__new__(cls, message)
        reason.kind = kind
        return reason


SkipCallback = Callable[[Path, str], None]  # called with a SkipReason

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Letterbox:
    """How one image was mapped into the square ``size`` x ``size`` network input."""

    gain: float  # size / long side of the original image
    pad_x: float  # left padding in input pixels
    pad_y: float  # top padding in input pixels
    orig_h: int
    orig_w: int
    size: int

    @property
    def resized_w(self) -> int:
        # Ultralytics rounds each resized side up (ceil) and caps it at the target size.
        return min(math.ceil(self.orig_w * self.gain), self.size)

    @property
    def resized_h(self) -> int:
        return min(math.ceil(self.orig_h * self.gain), self.size)

    def scale_boxes_back(self, xyxy: np.ndarray) -> np.ndarray:
        """Map ``(N, 4)`` xyxy boxes from input pixels to original pixels, clipped to the image.

        Per-axis gains (``resized / original``) as in Ultralytics' validator: the ceil rounding
        of the short side makes the x and y gains differ by up to one pixel over the image.
        """
        boxes = np.array(xyxy, dtype=np.float32, copy=True).reshape(-1, 4)
        gain_x = self.resized_w / self.orig_w
        gain_y = self.resized_h / self.orig_h
        boxes[:, [0, 2]] = ((boxes[:, [0, 2]] - self.pad_x) / gain_x).clip(0, self.orig_w)
        boxes[:, [1, 3]] = ((boxes[:, [1, 3]] - self.pad_y) / gain_y).clip(0, self.orig_h)
        return boxes


def letterbox(img_bgr: np.ndarray, size: int = IMGSZ) -> tuple[np.ndarray, Letterbox]:
    """Resize the long side to ``size`` and pad to a centred square; HWC uint8 BGR in and out."""
    resized, box = _resize_long_side(img_bgr, size)
    top, left = int(box.pad_y), int(box.pad_x)
    bottom, right = size - resized.shape[0] - top, size - resized.shape[1] - left
    padded = cv2.copyMakeBorder(resized, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
    return padded, box


def _resize_long_side(img_bgr: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """The letterbox's resize step, and where the resized image sits in the padded square."""
    if img_bgr.ndim == 2:  # grayscale decoded without IMREAD_COLOR: same three channels as cv2
        img_bgr = cv2.cvtColor(img_bgr, cv2.COLOR_GRAY2BGR)
    orig_h, orig_w = img_bgr.shape[:2]
    gain = size / max(orig_h, orig_w)
    box = Letterbox(gain=gain, pad_x=0.0, pad_y=0.0, orig_h=orig_h, orig_w=orig_w, size=size)
    new_w, new_h = box.resized_w, box.resized_h
    if (new_w, new_h) != (orig_w, orig_h):
        img_bgr = cv2.resize(img_bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top = round((size - new_h) / 2 - 0.1)  # Ultralytics' rounding; bottom gets the rest
    left = round((size - new_w) / 2 - 0.1)
    return img_bgr, Letterbox(gain=gain, pad_x=float(left), pad_y=float(top), orig_h=orig_h, orig_w=orig_w, size=size)


def to_network_input(padded_bgr: np.ndarray) -> np.ndarray:
    """HWC uint8 BGR -> CHW float32 RGB in 0..1 (a contiguous array)."""
    height, width = padded_bgr.shape[:2]
    chw_rgb = np.empty((3, height, width), dtype=np.float32)
    _divide_planes(padded_bgr, chw_rgb)
    return chw_rgb


def _divide_planes(image_bgr: np.ndarray, chw_rgb: np.ndarray) -> None:
    # float32 division, as Ultralytics' ``img.float() / 255``: bit-identical inputs. Dividing
    # OpenCV's contiguous planes is ~7x faster than dividing the strided HWC -> CHW view
    # (1.1 vs 7.5 ms per 640 image here) and gives the same floats (tested).
    for channel, plane in enumerate(reversed(cv2.split(image_bgr))):
        np.divide(plane, np.float32(255), out=chw_rgb[channel], dtype=np.float32)


def _letterboxed_input(resized_bgr: np.ndarray, box: Letterbox) -> np.ndarray:
    """``to_network_input(letterbox(...)[0])`` without the padded uint8 copy: the border is filled
    with 114 / 255 (the float the division gives for a 114 pixel) and only the image is divided."""
    chw_rgb = np.empty((3, box.size, box.size), dtype=np.float32)
    top, left = int(box.pad_y), int(box.pad_x)
    bottom, right = top + resized_bgr.shape[0], left + resized_bgr.shape[1]
    border = np.float32(PAD_VALUE) / np.float32(255)
    chw_rgb[:, :top] = border
    chw_rgb[:, bottom:] = border
    chw_rgb[:, top:bottom, :left] = border
    chw_rgb[:, top:bottom, right:] = border
    _divide_planes(resized_bgr, chw_rgb[:, top:bottom, left:right])
    return chw_rgb


def load_image(path: Path, size: int = IMGSZ) -> tuple[np.ndarray, Letterbox]:
    """Decode, letterbox and normalise one image: CHW float32 RGB / 255 and its Letterbox."""
    _quiet_opencv()
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:  # cv2.imread returns None for missing, unreadable and corrupt files alike
        reason = "file not found" if not Path(path).is_file() else "OpenCV cannot decode it"
        raise DataError(f"image {path} could not be read ({reason}); replace or remove the file.")
    resized, box = _resize_long_side(img, size)
    return _letterboxed_input(resized, box), box


# What the image libraries print to the process's stderr themselves (libjpeg on a truncated or
# damaged file, libpng on odd chunks, OpenCV's own logger): quantbench's sentence says what matters.
_DECODER_NOISE = (b"Premature end of JPEG file", b"Corrupt JPEG data", b"Invalid JPEG file structure",
                  b"Warning: unknown JFIF revision", b"libpng warning", b"[ WARN:")


class _DecoderNoiseFilter:
    """While entered (by any thread; counted), the C-level stderr (fd 2) goes through a pipe whose
    reader forwards every line to the real stderr except the decoders' own warnings.

    libjpeg writes with fprintf(stderr) from C, out of reach of Python's ``sys.stderr``; decoding
    runs on several threads, so per-call redirection would race. Python's own writes (logging,
    tqdm) go through the same pipe and pass unchanged.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._saved: int | None = None
        self._pump: threading.Thread | None = None

    def __enter__(self) -> None:
        with self._lock:
            if self._users == 0:
                self._start()
            self._users += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                self._stop()

    def _start(self) -> None:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no usable stderr (closed, or replaced without a descriptor)
            return
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self._saved = saved
        self._pump = threading.Thread(target=_forward, args=(read_end, saved), name="qb-stderr", daemon=True)
        self._pump.start()

    def _stop(self) -> None:
        if self._saved is None or self._pump is None:
            return
        with contextlib.suppress(ValueError):
            sys.stderr.flush()
        os.dup2(self._saved, 2)  # the pipe's last write end closes: the reader sees EOF
        self._pump.join(timeout=5)  # a child process still holding the pipe must not hang us
        os.close(self._saved)
        self._saved = self._pump = None


def _forward(read_end: int, out: int) -> None:
    pending = b""
    with contextlib.closing(_Fd(read_end)):
        while chunk := os.read(read_end, 1 << 16):
            *lines, pending = re.split(rb"(?<=[\n\r])", pending + chunk)
            for line in lines:
                if not line.lstrip().startswith(_DECODER_NOISE):
                    os.write(out, line)
        if pending and not pending.lstrip().startswith(_DECODER_NOISE):
            os.write(out, pending)


class _Fd:
    def __init__(self, fd: int):
        self.fd = fd

    def close(self) -> None:
        os.close(self.fd)


quiet_decoders = _DecoderNoiseFilter()


def _quiet_opencv() -> None:
    """OpenCV's own "[ WARN ] imread_(...): can't open/read file" lines: quantbench says it in one
    sentence (a skipped image's reason), so OpenCV's duplicate goes. Errors still print."""
    global _opencv_quiet
    if not _opencv_quiet:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        _opencv_quiet = True


_opencv_quiet = False


@dataclass(frozen=True)
class Batch:
    """Consecutive decoded images, in input order (skipped images are simply absent)."""

    images: np.ndarray  # (N, 3, S, S) float32
    paths: tuple[Path, ...]
    letterboxes: tuple[Letterbox, ...]

    def __len__(self) -> int:
        return len(self.paths)


def default_workers() -> int:
    # Decoding one COCO image costs ~4 ms of CPU: a GPU that infers thousands of images a second
    # needs every core decoding (the threads wait in OpenCV and numpy, outside the GIL).
    return max(2, os.cpu_count() or 2)


def iter_batches(
    paths: Iterable[Path],
    batch_size: int = 1,
    size: int = IMGSZ,
    workers: int | None = None,
    on_skip: SkipCallback | None = None,
    clock: StageClock | None = None,
    reuse_buffers: bool = False,
    expected_sizes: Mapping[Path, tuple[int, int]] | None = None,
) -> Iterator[Batch]:
    """Decode ``paths`` in a thread pool and yield batches of ``batch_size`` in input order.

    Decoding runs at most a few batches ahead of the consumer (bounded memory). An image that is
    missing or cannot be decoded is skipped with a logged warning and reported through
    ``on_skip(path, reason)``; the batch it would have been in is filled from the following
    images, so every batch but the last has ``batch_size`` images. Batches of several images are
    stacked on a thread of their own, so the consumer (the inference thread) only picks them up.
    ``clock`` gets the decoding threads' CPU time (``Stage.DECODE``).

    ``expected_sizes`` maps paths to the (width, height) their annotations declare: an image that
    decodes to another size is skipped too (reason kind `SIZE_MISMATCH`), since ground-truth boxes
    drawn on the declared size would be compared with detections on another one.

    ``reuse_buffers=True`` stacks into a few arrays used in turn, so a batch's ``images`` are
    overwritten a few batches later: for a consumer that is done with a batch when it asks for
    the next one (evaluation). A fresh array per batch costs a page fault per 4 KiB (a batch of
    8 at 640 is 39 MB, above malloc's reuse threshold): 2-4 ms per image here.
    """
    if batch_size < 1:
        raise DataError(f"batch size {batch_size} is not a positive integer; pass 1 or more.")
    paths = [Path(p) for p in paths]
    workers = workers or default_workers()

    decode = functools.partial(_decode_checked, size=size, clock=clock, expected_sizes=expected_sizes)

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="qb-decode")
    # Its own thread: queued behind the decodes of later batches, stacking would hold up the consumer.
    stacker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qb-stack")
    quiet_decoders.__enter__()
    try:
        # decoded-but-unconsumed images in flight: enough for every thread and a few batches ahead
        decoded = _in_order(pool, decode, paths, ahead=max(2 * workers, 3 * batch_size))
        groups = enumerate(_groups(_readable(decoded, on_skip), batch_size))
        # The consumer holds one batch while the next ones are stacked: a ring of 4 is enough.
        assemble = _BufferRing(_ASSEMBLE_AHEAD + 2).assemble if reuse_buffers else _assemble_new
        for _, batch in _in_order(stacker, assemble, groups, ahead=_ASSEMBLE_AHEAD):
            yield batch
    finally:
        # A consumer that stops early (break, exception) must not wait for queued decodes.
        pool.shutdown(wait=True, cancel_futures=True)
        stacker.shutdown(wait=True, cancel_futures=True)
        quiet_decoders.__exit__()


def _decode_checked(path: Path, *, size: int, clock: StageClock | None,
                    expected_sizes: Mapping[Path, tuple[int, int]] | None) -> tuple[np.ndarray, Letterbox] | SkipReason:
    """One image letterboxed, or why it is skipped: unreadable, or not the size its annotations declare."""
    with clock.measure(Stage.DECODE) if clock else contextlib.nullcontext():
        try:
            decoded = load_image(path, size)
        except DataError as exc:
            return SkipReason(str(exc), UNREADABLE)
    declared = expected_sizes.get(path) if expected_sizes else None
    box = decoded[1]
    if declared is not None and declared != (box.orig_w, box.orig_h):
        return SkipReason(
            f"image {path} is {box.orig_w}x{box.orig_h} pixels but its annotations declare "
            f"{declared[0]}x{declared[1]}; restore the original image or fix width/height in instances.json.",
            SIZE_MISMATCH)
    return decoded


_ASSEMBLE_AHEAD = 2  # batches stacked ahead of the consumer
_Item = TypeVar("_Item")
_Result = TypeVar("_Result")
_Decoded = tuple[Path, tuple[np.ndarray, Letterbox]]


def _in_order(pool: ThreadPoolExecutor, work: Callable[[_Item], _Result], items: Iterable[_Item],
              ahead: int) -> Iterator[tuple[_Item, _Result]]:
    """``(item, work(item))`` in the items' order, with up to ``ahead`` items worked on by ``pool``."""
    pending: deque[tuple[_Item, Future]] = deque()
    for item in items:
        pending.append((item, pool.submit(work, item)))
        if len(pending) >= ahead:
            first, future = pending.popleft()
            yield first, future.result()
    while pending:
        first, future = pending.popleft()
        yield first, future.result()


def _readable(decoded: Iterable[tuple[Path, tuple[np.ndarray, Letterbox] | SkipReason]],
              on_skip: SkipCallback | None) -> Iterator[_Decoded]:
    for path, result in decoded:
        if isinstance(result, str):
            log.warning("skipping %s", result)
            if on_skip is not None:
                on_skip(path, result)
            continue
        yield path, result


def _groups(images: Iterable[_Decoded], batch_size: int) -> Iterator[list[_Decoded]]:
    group: list[_Decoded] = []
    for image in images:
        group.append(image)
        if len(group) == batch_size:
            yield group
            group = []
    if group:
        yield group


def _assemble(group: list[_Decoded], out: np.ndarray | None = None) -> Batch:
    images = [image for _, (image, _) in group]
    # A batch of one is a view of its image; larger ones are stacked here, on a pool thread.
    stacked = images[0][None] if len(images) == 1 else np.stack(images, out=out)
    return Batch(stacked, tuple(path for path, _ in group), tuple(box for _, (_, box) in group))


def _assemble_new(numbered: tuple[int, list[_Decoded]]) -> Batch:
    return _assemble(numbered[1])


class _BufferRing:
    """Batch arrays used in turn: the k-th batch is stacked into array k % size."""

    def __init__(self, size: int):
        self._arrays: list[np.ndarray | None] = [None] * size

    def assemble(self, numbered: tuple[int, list[_Decoded]]) -> Batch:
        index, group = numbered
        slot = index % len(self._arrays)  # numbered by the consumer's thread: no two batches share a slot
        first = group[0][1][0]
        array = self._arrays[slot]
        if array is None or array.shape[1:] != first.shape or len(array) < len(group):
            array = self._arrays[slot] = np.empty((len(group), *first.shape), dtype=first.dtype)
        return _assemble(group, out=array[: len(group)])
