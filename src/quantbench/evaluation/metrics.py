"""COCO box mAP: pycocotools' ``COCOeval`` (the reference) or hotcoco's (the same numbers, faster).

Standard protocol: ``iouType="bbox"``, IoU thresholds 0.50:0.05:0.95, ``maxDets`` (1, 10, 100),
COCO's small/medium/large area ranges. Only the evaluated images go into ``params.imgIds``, so
a subset (``limit=``) or a run with skipped images is scored on what was actually seen.

Two ways to the same numbers:

* ``coco_metrics(dataset, detections)``: ``loadRes`` + ``evaluate`` + ``accumulate`` +
  ``summarize``, all at the end (the textbook call sequence);
* ``CocoScorer``: COCOeval's own per-image steps (``computeIoU``, ``evaluateImg``) run as each
  image's detections arrive, so they overlap inference; only ``accumulate``/``summarize`` are
  left for the end. Measured on val500 with yolov5n (300 boxes per image) on a busy 2-core
  machine, a one-shot COCOeval took 11-19 s after inference: ``evaluate()`` ~75 % (500 images x
  80 categories x 4 area ranges of Python matching loops), ``accumulate()`` ~18 %, ``loadRes``
  ~8 %. ``CocoScorer`` leaves only ``accumulate``'s share at the end. Its results equal
  ``coco_metrics``' bit for bit (tested).

``CocoEvaluator.HOTCOCO`` (the evaluation default) scores with hotcoco (PyPI ``hotcoco``, MIT), a
Rust re-implementation of pycocotools' ``COCOeval`` that runs its matching in native threads.
Every metric, per-class APs included, equals pycocotools' to 1e-12 on val500 for yolo11n-coco and
yolov5n-coco (tested on slices; all 500 images checked), and one call after the last image costs
less than pycocotools' per-image matching does for a single image: measured on this 2-core VM,
100 val500 images of yolo11n-coco (184 boxes per image), CPU ms per image: pycocotools matching
7.0 + accumulate 2.6, faster-coco-eval 1.4 (its IoUs and bookkeeping are Python), hotcoco 0.45
wall in all. ``HotcocoScorer`` therefore only collects detections and scores them at the end.
"""

from __future__ import annotations

import contextlib
import copy
import io
import threading
from collections.abc import Mapping
from enum import Enum
from typing import Any, Protocol

import numpy as np

from quantbench.data.dataset import CocoDataset, read_instances
from quantbench.errors import ConfigError, DataError
from quantbench.evaluation.detections import Detections
from quantbench.evaluation.matches import MAX_DETS, MatchTable, match_table, match_table_of
from quantbench.records import CocoMetrics

# COCOeval.stats positions (see COCOeval.summarize)
_STATS = {"map50_95": 0, "map50": 1, "map75": 2, "map_small": 3, "map_medium": 4, "map_large": 5, "ar100": 8}


class CocoEvaluator(Enum):
    """Which COCOeval implementation scores the detections; both give the same numbers (tested)."""

    PYCOCOTOOLS = "pycocotools"  # the reference: Python matching, image by image (CocoScorer)
    HOTCOCO = "hotcoco"  # native matching of every image at the end (HotcocoScorer)


class Scorer(Protocol):
    """Matches images' detections against the ground truth, then summarises (``CocoMetrics``)."""

    def add(self, image_id: int, det: Detections) -> None: ...

    def __len__(self) -> int: ...

    def result(self) -> CocoMetrics: ...


class MatchingScorer(Scorer, Protocol):
    """A scorer that also hands out its per-image matches (``matches.MatchTable``)."""

    def match_table(self) -> MatchTable: ...


def make_scorer(dataset: CocoDataset, evaluator: CocoEvaluator) -> MatchingScorer:
    """A fresh scorer of ``evaluator`` for ``dataset``; ``add`` it every evaluated image."""
    return _SCORERS[evaluator](dataset)


def coco_metrics(
    dataset: CocoDataset, detections: Mapping[int, Detections], evaluator: CocoEvaluator = CocoEvaluator.PYCOCOTOOLS
) -> CocoMetrics:
    """Score ``detections`` (image id -> boxes in original pixels) against ``dataset``.

    Every evaluated image must have an entry (an empty ``Detections`` when nothing was found);
    images of the dataset without an entry (skipped ones) are left out of the evaluation.
    A summary value pycocotools cannot compute (no ground truth of that size among the
    evaluated images) is -1, as pycocotools reports it; ``per_class_ap`` holds only the classes
    with ground truth among the evaluated images.
    """
    from pycocotools.cocoeval import COCOeval

    image_ids = sorted(int(i) for i in detections)
    unknown = sorted(set(image_ids) - set(dataset.image_ids))
    if unknown:
        raise DataError(
            f"detections for image ids {unknown[:5]} are not among the images of dataset "
            f"{dataset.name} ({dataset.annotations}); score detections against the dataset they came from."
        )
    if not image_ids:
        raise DataError(
            f"no images of dataset {dataset.name} were evaluated; check the images in {dataset.images_dir}."
        )

    if evaluator is not CocoEvaluator.PYCOCOTOOLS:
        scorer = make_scorer(dataset, evaluator)
        for image_id, det in detections.items():
            scorer.add(image_id, det)
        return scorer.result()
    results = _results_table(dataset, detections)
    with _quiet():
        coco_gt = _ground_truth(dataset)
        coco_dt = coco_gt.loadRes(results) if len(results) else _empty_results(coco_gt)
        coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
        coco_eval.params.imgIds = image_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return _metrics(coco_eval, dataset)


def coco_metrics_and_matches(
    dataset: CocoDataset, detections: Mapping[int, Detections], evaluator: CocoEvaluator = CocoEvaluator.PYCOCOTOOLS
) -> tuple[CocoMetrics, MatchTable]:
    """``coco_metrics`` and the evaluation's ``MatchTable`` (for resampling the images, ``uncertainty``).

    Scores through ``make_scorer``, so the metrics equal ``coco_metrics``' (tested); every
    evaluated image must have an entry, as there. Same default scorer as ``coco_metrics``;
    ``CocoEvaluator.HOTCOCO`` gives the same numbers and table, faster.
    """
    scorer = make_scorer(dataset, evaluator)
    for image_id, det in detections.items():
        scorer.add(image_id, det)
    return scorer.result(), scorer.match_table()


class CocoScorer:
    """COCOeval run image by image: ``add`` each image's detections, then ``result()``.

    Uses pycocotools' own ``computeIoU``/``evaluateImg``/``accumulate``/``summarize`` on the
    evaluator's documented-by-source state (``_gts``, ``_dts``, ``ious``, ``evalImgs``, laid out
    as ``COCOeval.evaluate`` lays them out), so the numbers are pycocotools' numbers.
    Not thread-safe: call ``add`` from one thread at a time.
    """

    def __init__(self, dataset: CocoDataset):
        from pycocotools.cocoeval import COCOeval

        self.dataset = dataset
        self._category_ids = np.asarray(dataset.category_ids)
        self._known_ids = set(dataset.image_ids)
        with _quiet():
            coco_gt = _ground_truth(dataset)
            self._eval = COCOeval(coco_gt, _empty_results(coco_gt), iouType="bbox")
        params = self._eval.params
        # What COCOeval.evaluate does to the params before its _prepare():
        params.imgIds = sorted(self._known_ids)
        params.catIds = sorted(set(params.catIds))
        params.maxDets = sorted(params.maxDets)
        self._eval._prepare()  # ground truth per (image, category); no detections yet
        self._eval.ious = {}
        self._per_image: dict[int, list[list[Any]]] = {}  # image id -> [category][area] evalImg
        self._next_ann_id = 1  # loadRes numbers results from 1; 0 means "unmatched" to COCOeval

    def add(self, image_id: int, det: Detections) -> None:
        """Match one image's detections (original pixels) against its ground truth."""
        image_id = _known_image_id(image_id, self._known_ids, self.dataset)
        if image_id in self._per_image:
            raise DataError(f"image id {image_id} was scored twice; add each image's detections once.")
        _check_classes(det, self.dataset)
        ev, params = self._eval, self._eval.params
        by_category: dict[int, list[dict[str, Any]]] = {}
        for (x1, y1, x2, y2), score, cls in zip(det.boxes.tolist(), det.scores.tolist(), det.classes.tolist()):
            w, h = x2 - x1, y2 - y1  # the fields and values loadRes gives a bbox result
            by_category.setdefault(int(self._category_ids[cls]), []).append(
                {"id": self._next_ann_id, "image_id": image_id, "category_id": int(self._category_ids[cls]),
                 "bbox": [x1, y1, w, h], "score": score, "area": w * h, "iscrowd": 0}
            )
            self._next_ann_id += 1
        max_det = params.maxDets[-1]
        rows = []
        for cat_id in params.catIds:
            ev._dts[image_id, cat_id] = by_category.get(cat_id, [])
            ev.ious[image_id, cat_id] = ev.computeIoU(image_id, cat_id)
            rows.append([ev.evaluateImg(image_id, cat_id, area, max_det) for area in params.areaRng])
        self._per_image[image_id] = rows

    def __len__(self) -> int:
        return len(self._per_image)

    def result(self) -> CocoMetrics:
        """Accumulate and summarise over the images added so far."""
        if not self._per_image:
            raise DataError(
                f"no images of dataset {self.dataset.name} were evaluated; "
                f"check the images in {self.dataset.images_dir}."
            )
        ev, params = self._eval, self._eval.params
        image_ids = sorted(self._per_image)
        params.imgIds = image_ids
        # COCOeval.evaluate's layout: evalImgs[(category * areas + area) * images + image]
        categories, areas = range(len(params.catIds)), range(len(params.areaRng))
        ev.evalImgs = [self._per_image[i][k][a] for k in categories for a in areas for i in image_ids]
        ev._paramsEval = copy.deepcopy(params)
        with _quiet():
            ev.accumulate()
            ev.summarize()
        return _metrics(ev, self.dataset)

    def match_table(self) -> MatchTable:
        """The per-image matches of the images added so far (area "all", 100 detections)."""
        if not self._per_image:
            raise DataError(
                f"no images of dataset {self.dataset.name} were evaluated; "
                f"check the images in {self.dataset.images_dir}."
            )
        params = self._eval.params
        image_ids = sorted(self._per_image)
        return match_table((rows[0] for i in image_ids for rows in self._per_image[i]), image_ids=image_ids,
                           category_ids=params.catIds, iou_thresholds=params.iouThrs,
                           area_all=params.areaRng[0], max_dets=params.maxDets)


class HotcocoScorer:
    """hotcoco's ``COCOeval`` over every added image at once: ``add`` collects, ``result()`` scores.

    ``add`` is thread-safe (NMS workers call it side by side); the detections go to hotcoco as
    the ``[image_id, x, y, w, h, score, category_id]`` table that pycocotools' ``loadRes`` takes.
    """

    def __init__(self, dataset: CocoDataset):
        hotcoco = _hotcoco()
        self.dataset = dataset
        self._category_ids = np.asarray(dataset.category_ids, dtype=np.float64)
        self._known_ids = set(dataset.image_ids)
        self._ground_truth = hotcoco.COCO(_instances_with_area(dataset))
        self._tables: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def add(self, image_id: int, det: Detections) -> None:
        image_id = _known_image_id(image_id, self._known_ids, self.dataset)
        _check_classes(det, self.dataset)
        table = _image_table(image_id, det, self._category_ids)
        with self._lock:
            if image_id in self._tables:
                raise DataError(f"image id {image_id} was scored twice; add each image's detections once.")
            self._tables[image_id] = table

    def __len__(self) -> int:
        return len(self._tables)

    def result(self) -> CocoMetrics:
        """Match, accumulate and summarise the images added so far (hotcoco's own threads)."""
        evaluator = self._evaluator()
        with _quiet():
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        return _metrics(evaluator, self.dataset)

    def _evaluator(self):
        """hotcoco's COCOeval over the images added so far (DataError when there are none)."""
        if not self._tables:
            raise DataError(
                f"no images of dataset {self.dataset.name} were evaluated; "
                f"check the images in {self.dataset.images_dir}."
            )
        image_ids = sorted(self._tables)
        table = np.concatenate([self._tables[i] for i in image_ids])
        evaluator = _hotcoco().COCOeval(self._ground_truth, self._ground_truth.load_res(table), "bbox")
        evaluator.params.img_ids = image_ids
        return evaluator

    def match_table(self) -> MatchTable:
        """The per-image matches of the images added so far (area "all", 100 detections).

        Matches again, for area "all" and 100 detections only: hotcoco's matching takes
        milliseconds, while handing all four area ranges' per-image results to Python (its
        ``evalImgs``) takes seconds for 500 images. COCOeval matches each area range on its own,
        so these are the matches ``result()`` counted (equal to pycocotools', tested).
        """
        evaluator = self._evaluator()
        params = evaluator.params  # the live parameters; whole values must be assigned
        params.area_rng = params.area_rng[:1]  # "all"
        params.area_rng_lbl = params.area_rng_lbl[:1]
        params.max_dets = [MAX_DETS]
        with _quiet():
            evaluator.evaluate()
        return match_table_of(evaluator)


def _hotcoco():
    try:
        import hotcoco
    except ImportError:
        raise ConfigError(
            "the hotcoco package is not installed; pip install hotcoco (a quantbench dependency), "
            "or score with HostPipeline(evaluator=CocoEvaluator.PYCOCOTOOLS)."
        ) from None
    return hotcoco


_SCORERS: dict[CocoEvaluator, type] = {CocoEvaluator.PYCOCOTOOLS: CocoScorer, CocoEvaluator.HOTCOCO: HotcocoScorer}


@contextlib.contextmanager
def _quiet():
    """pycocotools prints progress on stdout; errors still raise."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _instances_with_area(dataset: CocoDataset) -> dict[str, Any]:
    data = read_instances(dataset.annotations)
    for ann in data["annotations"]:
        # COCOeval sorts boxes into size ranges by 'area'; datasets converted from YOLO labels
        # sometimes omit it, and the box area is then the only meaningful value.
        ann.setdefault("area", float(ann["bbox"][2]) * float(ann["bbox"][3]))
        ann.setdefault("iscrowd", 0)
    return data


def _ground_truth(dataset: CocoDataset):
    from pycocotools.coco import COCO

    coco_gt = COCO()
    coco_gt.dataset = _instances_with_area(dataset)
    coco_gt.createIndex()
    return coco_gt


def _metrics(evaluator, dataset: CocoDataset) -> CocoMetrics:
    stats = evaluator.stats
    return CocoMetrics(
        **{name: float(stats[i]) for name, i in _STATS.items()},
        per_class_ap=_per_class_ap(evaluator, dataset),
    )


def _check_classes(det: Detections, dataset: CocoDataset) -> None:
    if len(det) and (det.classes.min() < 0 or det.classes.max() >= len(dataset.category_ids)):
        raise DataError(
            f"detections use class index {int(det.classes.max())} but dataset {dataset.name} "
            f"has {len(dataset.category_ids)} categories ({dataset.annotations}); evaluate the model on a "
            "dataset whose categories match its classes."
        )


def _results_table(dataset: CocoDataset, detections: Mapping[int, Detections]) -> np.ndarray:
    """pycocotools' ndarray result format: rows of [image_id, x, y, w, h, score, category_id]."""
    category_ids = np.asarray(dataset.category_ids, dtype=np.float64)
    rows = []
    for image_id, det in detections.items():
        if not len(det):
            continue
        _check_classes(det, dataset)
        rows.append(_image_table(image_id, det, category_ids))
    return np.concatenate(rows) if rows else np.zeros((0, 7))


def _image_table(image_id: int, det: Detections, category_ids: np.ndarray) -> np.ndarray:
    boxes = det.boxes.astype(np.float64)
    table = np.empty((len(det), 7), dtype=np.float64)
    table[:, 0] = image_id
    table[:, 1:3] = boxes[:, :2]
    table[:, 3:5] = boxes[:, 2:] - boxes[:, :2]  # COCO boxes are x, y, width, height
    table[:, 5] = det.scores
    table[:, 6] = category_ids[det.classes]
    return table


def _empty_results(coco_gt):
    """A results COCO with no detections (``loadRes`` cannot take an empty list)."""
    from pycocotools.coco import COCO

    coco_dt = COCO()
    gt = coco_gt.dataset
    coco_dt.dataset = {"images": gt["images"], "categories": gt["categories"], "annotations": []}
    coco_dt.createIndex()
    return coco_dt


def _per_class_ap(evaluator, dataset: CocoDataset) -> dict[str, float]:
    """AP50-95 per class (area 'all', 100 detections) from ``eval['precision']``."""
    precision = evaluator.eval["precision"]  # [IoU thresholds, recall points, categories, areas, maxDets]
    cat_index = {cat_id: k for k, cat_id in enumerate(evaluator.params.catIds)}
    per_class = {}
    for name, cat_id in zip(dataset.class_names, dataset.category_ids):
        p = precision[:, :, cat_index[cat_id], 0, -1]
        valid = p[p > -1]  # -1: no ground truth of this class among the evaluated images
        if valid.size:
            per_class[name] = float(valid.mean())
    return per_class


def _known_image_id(image_id: Any, known: set[int], dataset: CocoDataset) -> int:
    """``image_id`` as an int; DataError when the dataset has no such image (detections of other data)."""
    image_id = int(image_id)
    if image_id not in known:
        raise DataError(
            f"image id {image_id} is not in dataset {dataset.name} ({dataset.annotations}); "
            "score detections against the dataset they came from."
        )
    return image_id
