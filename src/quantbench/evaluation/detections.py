"""Raw YOLO output -> boxes: Ultralytics' validation NMS protocol, on OpenCV's NMS.

The protocol (``ultralytics.utils.nms.non_max_suppression`` as the validator calls it, with
``multi_label=True, agnostic=False``):

* every (anchor, class) pair whose score is above ``conf`` is a candidate (multi-label);
* at most ``max_nms`` candidates, the highest scores, go into NMS;
* NMS is class-wise at IoU ``iou`` (a box suppresses only boxes of its own class);
* at most ``max_det`` boxes are kept, highest scores first.

Candidate selection is vectorised with numpy; the suppression itself is OpenCV's greedy NMS
(``cv2.dnn.NMSBoxes``), not a hand-written loop, run once per class present
(``NmsKernel.PER_CLASS``, the default). Class-wise NMS never compares boxes of two classes, so
per-class calls keep exactly the boxes that one ``cv2.dnn.NMSBoxesBatched`` call over all classes
keeps (``NmsKernel.BATCHED``, the kernel of earlier releases, kept as the reference), without
the batched call's cost of comparing every candidate with the kept boxes of every class:
measured on this 2-core VM (CPU ms per image, default ``NmsConfig``), yolo11n-coco 1.95 -> 1.11 on
all 500 val500 images, yolov5n-coco 11.1 -> 3.4 on the first 200, the same boxes on every image. OpenCV
returns kept indices highest score first, as torchvision's NMS does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import cv2
import numpy as np

from quantbench.errors import ConfigError, ModelError


@dataclass(frozen=True)
class NmsConfig:
    """Ultralytics' validation defaults."""

    conf: float = 0.001
    iou: float = 0.7
    max_det: int = 300
    max_nms: int = 30000

    def __post_init__(self) -> None:
        for name in ("conf", "iou"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"NMS {name}={value!r} is outside 0..1; pass a value between 0 and 1.")
        for name in ("max_det", "max_nms"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"NMS {name}={value!r} is not a positive integer; pass 1 or more.")


class NmsKernel(Enum):
    """How the class-wise suppression is computed; both keep the same boxes (tested)."""

    PER_CLASS = "per-class"  # one cv2.dnn.NMSBoxes call per class present
    BATCHED = "batched"  # one cv2.dnn.NMSBoxesBatched call over every class (the reference)


@dataclass(frozen=True, eq=False)
class Detections:
    """Boxes of one image, highest score first."""

    boxes: np.ndarray  # (N, 4) float32 xyxy
    scores: np.ndarray  # (N,) float32
    classes: np.ndarray  # (N,) int64 contiguous class index

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64))


def postprocess(
    output: np.ndarray, cfg: NmsConfig = NmsConfig(), kernel: NmsKernel = NmsKernel.PER_CLASS
) -> list[Detections]:
    """Decode ``[B, 4 + nc, anchors]`` (cx, cy, w, h in input pixels, then class scores).

    Returns one ``Detections`` per batch item, boxes xyxy in input (letterboxed) pixels.
    Thread-safe: evaluation runs it on several images at once.
    """
    output = np.asarray(output)
    if output.ndim != 3 or output.shape[1] < 5:
        raise ModelError(
            f"model output of shape {tuple(output.shape)} is not [batch, 4 + classes, anchors]; "
            "export the detector with its raw (non-NMS) head, as Ultralytics' ONNX export does."
        )
    return [_postprocess_one(pred, cfg, kernel) for pred in output]


def _postprocess_one(pred: np.ndarray, cfg: NmsConfig, kernel: NmsKernel) -> Detections:
    scores_by_class = pred[4:]  # (nc, anchors)
    # Anchors with any class above conf, then every (anchor, class) pair above conf, in
    # Ultralytics' order (anchor-major), so that equal scores are ordered the same way.
    anchors = np.flatnonzero(scores_by_class.max(axis=0) > cfg.conf)
    if anchors.size == 0:
        return Detections.empty()
    anchor_scores = np.ascontiguousarray(scores_by_class[:, anchors].T, dtype=np.float32)  # (n, nc)
    rows, classes = np.nonzero(anchor_scores > cfg.conf)
    scores = anchor_scores[rows, classes]
    # Highest scores first; the first max_nms of them are NMS's candidates.
    order = np.argsort(-scores, kind="stable")[: cfg.max_nms]
    rows, classes, scores = rows[order], classes[order].astype(np.int32), scores[order]

    cx, cy, w, h = (np.asarray(pred[i, anchors[rows]], dtype=np.float32) for i in range(4))
    half_w, half_h = w / 2, h / 2
    xyxy = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)  # float32, as Ultralytics
    # OpenCV takes (x, y, w, h) rectangles and offsets classes apart in float64 (Ultralytics
    # offsets them in float32, which rounds corners by up to 1/32 px for high class indices:
    # the only source of disagreement, on IoUs within ~1e-3 of the threshold).
    rects = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1).astype(np.float64)
    keep = _nms_first_kept(rects, scores, classes, cfg, _KERNELS[kernel])
    return Detections(boxes=xyxy[keep], scores=scores[keep], classes=classes[keep].astype(np.int64))


def _nms_first_kept(
    rects: np.ndarray, scores: np.ndarray, classes: np.ndarray, cfg: NmsConfig, nms: _Suppress
) -> np.ndarray:
    """The first ``max_det`` boxes greedy class-wise NMS keeps from score-sorted candidates.

    Greedy NMS decides each box from the higher-scored boxes alone, so NMS over a score-sorted
    prefix keeps exactly the same leading boxes as NMS over everything. A prefix a few times
    ``max_det`` long usually yields ``max_det`` boxes: ~2 ms instead of ~150 ms for an image
    with 13k candidates (OpenCV's NMS costs candidates x kept boxes). The prefix grows x4
    until it yields ``max_det`` boxes or covers every candidate.
    """
    prefix = 8 * cfg.max_det
    while True:
        prefix = min(prefix, len(scores))
        keep = nms(rects[:prefix], scores[:prefix], classes[:prefix], cfg)
        if len(keep) >= cfg.max_det or prefix == len(scores):
            return keep[: cfg.max_det]
        prefix *= 4


def _seq(array: np.ndarray) -> Any:
    """``array`` as OpenCV's NMS takes it: its stubs name sequences, but it reads numpy arrays
    directly (converting to lists would cost more than the NMS itself)."""
    return array


def _nms_batched(rects: np.ndarray, scores: np.ndarray, classes: np.ndarray, cfg: NmsConfig) -> np.ndarray:
    keep = cv2.dnn.NMSBoxesBatched(_seq(rects), _seq(scores), _seq(classes), cfg.conf, cfg.iou)
    return np.asarray(keep, dtype=np.int64).reshape(-1)


def _nms_per_class(rects: np.ndarray, scores: np.ndarray, classes: np.ndarray, cfg: NmsConfig) -> np.ndarray:
    """Kept indices in ascending order, which for score-sorted candidates is the batched call's order.

    Within a class the candidates keep their (score) order, so OpenCV sees each class's boxes
    in the order the batched call would and keeps the same ones; ties in score stay in index
    order in both (OpenCV sorts stably).
    """
    by_class = np.argsort(classes, kind="stable")
    groups = np.split(by_class, np.flatnonzero(np.diff(classes[by_class])) + 1)
    kept = [group[np.asarray(cv2.dnn.NMSBoxes(_seq(rects[group]), _seq(scores[group]), cfg.conf, cfg.iou),
                             np.int64).reshape(-1)]
            for group in groups if len(group)]
    return np.sort(np.concatenate(kept)) if kept else np.zeros((0,), np.int64)


_Suppress = Callable[[np.ndarray, np.ndarray, np.ndarray, NmsConfig], np.ndarray]
_KERNELS: dict[NmsKernel, _Suppress] = {NmsKernel.PER_CLASS: _nms_per_class, NmsKernel.BATCHED: _nms_batched}
