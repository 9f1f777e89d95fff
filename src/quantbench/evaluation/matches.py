"""Per-image match table of one COCO evaluation: what ``accumulate`` needs, kept small and savable.

COCOeval's ``evaluateImg`` decides, per (image, category), which detections match which ground
truth at each IoU threshold; ``accumulate`` then only sorts, counts and interpolates. A
``MatchTable`` keeps exactly what ``accumulate`` reads for area range "all" and 100 detections
per image (the setting of mAP50-95 and mAP50): per category, each detection's score, image and
matched/ignored flags per IoU threshold, and the non-ignored ground truth per image. From it
mAP50-95 and mAP50 come back exactly (``map50_95``/``map50``, equal to pycocotools' to 1e-12,
tested), and so do the mAPs of any resample of the images (``uncertainty.paired_bootstrap``)
without matching again.

Both COCOeval implementations lay out ``evalImgs`` differently (pycocotools:
[category][area][image] with None where an image has neither boxes nor ground truth of a
category; hotcoco: only the non-empty entries, image by image), so entries are picked by their
own ``category_id``/``image_id``/``aRng``/``maxDet`` fields, never by position.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantbench.cache import atomic_write_bytes
from quantbench.errors import DataError

MAX_DETS = 100  # detections per image and category that mAP50-95 and mAP50 count
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)  # as COCOeval's
_FORMAT = 1  # MatchTable.save layout; bump when the arrays change
_ARRAYS = ("image_ids", "category_ids", "iou_thresholds", "gt_counts", "det_offsets", "det_scores",
           "det_images", "det_matched", "det_ignored")


@dataclass(frozen=True, eq=False)
class MatchTable:
    """COCOeval's per-image matches (area "all", 100 detections) of one evaluation.

    Detections of category ``k`` are rows ``det_offsets[k]:det_offsets[k + 1]`` of the ``det_*``
    arrays, in COCOeval's concatenation order (images in evaluation order, each image's boxes
    highest score first), so a stable sort by score gives ``accumulate``'s order.
    """

    image_ids: np.ndarray  # (images,) int64, evaluation order
    category_ids: np.ndarray  # (categories,) int64, COCOeval's params.catIds
    iou_thresholds: np.ndarray  # (thresholds,) float64, 0.50:0.05:0.95
    gt_counts: np.ndarray  # (categories, images) int64: ground truth not ignored (not crowd)
    det_offsets: np.ndarray  # (categories + 1,) int64
    det_scores: np.ndarray  # (detections,) float64
    det_images: np.ndarray  # (detections,) int64: index into image_ids
    det_matched: np.ndarray  # (thresholds, detections) bool: dtMatches > 0
    det_ignored: np.ndarray  # (thresholds, detections) bool: dtIgnore (matched to crowd / outside area)

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    def category_rows(self, k: int) -> slice:
        return slice(int(self.det_offsets[k]), int(self.det_offsets[k + 1]))

    def precision(self) -> np.ndarray:
        """COCOeval's ``eval['precision'][:, :, :, area all, maxDets 100]``: [IoU, recall, category], -1 unset."""
        out = -np.ones((len(self.iou_thresholds), len(RECALL_THRESHOLDS), len(self.category_ids)))
        for k in range(len(self.category_ids)):
            npig = int(self.gt_counts[k].sum())
            if npig == 0:
                continue  # accumulate skips a category without ground truth (stays -1)
            rows = self.category_rows(k)
            order = np.argsort(-self.det_scores[rows], kind="mergesort")
            matched, ignored = self.det_matched[:, rows][:, order], self.det_ignored[:, rows][:, order]
            tp_sum = np.cumsum(matched & ~ignored, axis=1).astype(np.float64)
            fp_sum = np.cumsum(~matched & ~ignored, axis=1).astype(np.float64)
            for t in range(len(self.iou_thresholds)):
                out[t, :, k] = _interpolated_precision(tp_sum[t], fp_sum[t], npig)
        return out

    def map50_95(self) -> float:
        """mAP at IoU 0.50:0.95, as ``COCOeval.summarize`` computes it (stats[0])."""
        return _mean_valid(self.precision())

    def map50(self) -> float:
        """mAP at IoU 0.50 (stats[1])."""
        thresholds = np.where(self.iou_thresholds == 0.5)[0]  # summarize's iouThr=.5 lookup
        return _mean_valid(self.precision()[thresholds])

    def save(self, path: str | Path) -> Path:
        """Write the table as one ``.npz`` (atomically: a reader never sees half a file)."""
        buffer = io.BytesIO()
        np.savez_compressed(buffer, format=np.array(_FORMAT), **{name: getattr(self, name) for name in _ARRAYS})
        return atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> MatchTable:
        """Read a table ``save`` wrote; DataError naming the file when it is not one."""
        try:
            with np.load(path, allow_pickle=False) as data:
                if "format" not in data or int(data["format"]) != _FORMAT:
                    raise DataError(f"{path} is not a match table of format {_FORMAT}; "
                                    "save the evaluation's MatchTable again with this quantbench.")
                return cls(**{name: data[name] for name in _ARRAYS})
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{path} cannot be read as a match table ({exc}); "
                            "pass a file written by MatchTable.save.") from None


def _interpolated_precision(tp: np.ndarray, fp: np.ndarray, npig: int) -> np.ndarray:
    """One (category, IoU threshold) row of ``accumulate``: 101-point precision, 0 past the last recall."""
    rc = tp / npig
    pr = tp / (fp + tp + np.spacing(1))
    envelope = np.maximum.accumulate(pr[::-1])[::-1]  # accumulate's "pr[i-1] = max(pr[i-1], pr[i])"
    picks = np.searchsorted(rc, RECALL_THRESHOLDS, side="left")
    q = np.zeros(len(RECALL_THRESHOLDS))
    inside = picks < len(pr)  # accumulate stops at the first threshold past the last recall
    q[inside] = envelope[picks[inside]]
    return q


def _mean_valid(precision: np.ndarray) -> float:
    valid = precision[precision > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def match_table_of(evaluator: Any) -> MatchTable:
    """The table of an evaluated COCOeval, pycocotools' or hotcoco's (``evalImgs`` and ``params``)."""
    params = evaluator.params  # both have the camelCase fields
    return match_table(evaluator.evalImgs, image_ids=list(params.imgIds), category_ids=list(params.catIds),
                       iou_thresholds=list(params.iouThrs), area_all=list(params.areaRng)[0],
                       max_dets=list(params.maxDets))


def match_table(eval_imgs: Iterable[Mapping[str, Any] | None], *, image_ids: Sequence[int],
                category_ids: Sequence[int], iou_thresholds: Sequence[float], area_all: Sequence[float],
                max_dets: Sequence[int]) -> MatchTable:
    """The table of COCOeval ``evaluateImg`` results (any order; None entries and other ranges skipped).

    ``area_all`` is COCOeval's first area range ("all"); ``max_dets`` its ``maxDets``, which must
    include 100.
    """
    if MAX_DETS not in list(max_dets):
        raise DataError(f"the evaluation's maxDets {list(max_dets)} lack {MAX_DETS}; "
                        "evaluate with COCOeval's default maxDets (1, 10, 100).")
    area = [float(v) for v in area_all]
    image_index = {int(i): n for n, i in enumerate(image_ids)}
    category_index = {int(c): k for k, c in enumerate(category_ids)}
    entries: list[list[tuple[int, Mapping[str, Any]]]] = [[] for _ in category_ids]
    gt_counts = np.zeros((len(category_ids), len(image_ids)), dtype=np.int64)
    for entry in eval_imgs:
        if entry is None or int(entry["maxDet"]) != MAX_DETS or [float(v) for v in entry["aRng"]] != area:
            continue
        k, n = category_index[int(entry["category_id"])], image_index[int(entry["image_id"])]
        entries[k].append((n, entry))
        gt_counts[k, n] = int(np.count_nonzero(~np.asarray(entry["gtIgnore"], dtype=bool)))
    return _assemble(np.asarray(image_ids, dtype=np.int64), np.asarray(category_ids, dtype=np.int64),
                     np.asarray(iou_thresholds, dtype=np.float64), gt_counts, entries)


def _assemble(image_ids: np.ndarray, category_ids: np.ndarray, iou_thresholds: np.ndarray, gt_counts: np.ndarray,
              entries: Sequence[list[tuple[int, Mapping[str, Any]]]]) -> MatchTable:
    scores, images, matched, ignored, offsets = [], [], [], [], [0]
    thresholds = len(iou_thresholds)
    for per_category in entries:
        per_category.sort(key=lambda item: item[0])  # COCOeval concatenates in image order
        for n, entry in per_category:
            entry_scores = np.asarray(entry["dtScores"], dtype=np.float64)[:MAX_DETS]
            scores.append(entry_scores)
            images.append(np.full(len(entry_scores), n, dtype=np.int64))
            matched.append(np.asarray(entry["dtMatches"]).reshape(thresholds, -1)[:, :MAX_DETS] > 0)
            ignored.append(np.asarray(entry["dtIgnore"], dtype=bool).reshape(thresholds, -1)[:, :MAX_DETS])
        offsets.append(offsets[-1] + sum(len(entry["dtScores"][:MAX_DETS]) for _, entry in per_category))
    return MatchTable(
        image_ids=image_ids, category_ids=category_ids, iou_thresholds=iou_thresholds, gt_counts=gt_counts,
        det_offsets=np.asarray(offsets, dtype=np.int64),
        det_scores=np.concatenate(scores) if scores else np.zeros(0),
        det_images=np.concatenate(images) if images else np.zeros(0, dtype=np.int64),
        det_matched=np.concatenate(matched, axis=1) if matched else np.zeros((thresholds, 0), dtype=bool),
        det_ignored=np.concatenate(ignored, axis=1) if ignored else np.zeros((thresholds, 0), dtype=bool),
    )
