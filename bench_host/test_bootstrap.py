"""The paired bootstrap of the mAP drop (``uncertainty.paired_bootstrap``): ``--bootstrap-resamples``
resamples of ``--bootstrap-images`` images, timed with pytest-benchmark.

The pair is the model's real detections (replayed outputs, NMS at conf 0.001) as the baseline and
the same detections with every box jittered by 1 % of its size (seeded) as the variant: a small,
real drop, with the matching structure of real data (~200 boxes per image for yolo11n-coco).
"""

from __future__ import annotations

import numpy as np
import pytest

from quantbench.data.dataset import CocoDataset
from quantbench.data.preprocess import iter_batches
from quantbench.decision.uncertainty import paired_bootstrap, prepare
from quantbench.evaluation.detections import Detections, postprocess
from quantbench.evaluation.matches import MatchTable
from quantbench.evaluation.metrics import CocoEvaluator, coco_metrics_and_matches

JITTER = 0.01  # variant boxes: each side moved by N(0, 1 %) of the box's width or height


def detections_of(outputs: np.ndarray, dataset: CocoDataset) -> dict[int, Detections]:
    """Image id -> NMS'd boxes of the recorded outputs, in original pixels."""
    image_id_of = dict(zip(dataset.files, dataset.image_ids))
    detections, row = {}, 0
    for batch in iter_batches(dataset.files, 8):
        for path, box in zip(batch.paths, batch.letterboxes):
            det = postprocess(np.asarray(outputs[row:row + 1]))[0]
            detections[image_id_of[path]] = Detections(box.scale_boxes_back(det.boxes), det.scores, det.classes)
            row += 1
    return detections


def jittered(detections: dict[int, Detections], seed: int = 0) -> dict[int, Detections]:
    rng = np.random.default_rng(seed)
    out = {}
    for image_id, det in detections.items():
        size = np.tile(det.boxes[:, 2:] - det.boxes[:, :2], 2)
        boxes = det.boxes + rng.normal(0.0, JITTER, det.boxes.shape) * size
        out[image_id] = Detections(boxes.astype(np.float32), det.scores, det.classes)
    return out


@pytest.fixture(scope="module")
def table_pair(bootstrap_outputs: np.ndarray, bootstrap_dataset: CocoDataset) -> tuple[MatchTable, MatchTable]:
    baseline = detections_of(bootstrap_outputs, bootstrap_dataset)
    tables = []
    for detections in (jittered(baseline), baseline):
        metrics, table = coco_metrics_and_matches(bootstrap_dataset, detections, CocoEvaluator.HOTCOCO)
        assert table.map50_95() == pytest.approx(metrics.map50_95, abs=1e-12)
        tables.append(table)
    return tables[0], tables[1]


def test_paired_bootstrap(benchmark, table_pair: tuple[MatchTable, MatchTable], bootstrap_resamples: int):
    variant, baseline = table_pair
    intervals = []
    benchmark.pedantic(lambda: intervals.append(paired_bootstrap(variant, baseline, resamples=bootstrap_resamples)),
                       rounds=3, iterations=1, warmup_rounds=0)
    drop = intervals[-1]
    assert drop.map50_95.lower <= drop.map50_95.point <= drop.map50_95.upper
    assert drop.map50_95.images == baseline.num_images
    benchmark.extra_info["paired_bootstrap"] = {
        "images": baseline.num_images, "resamples": bootstrap_resamples,
        "detections_per_image": len(baseline.det_scores) / baseline.num_images,
        "true_positive_points": [len(prepare(t).tp_images) for t in (variant, baseline)],
        "map50_95_drop": [drop.map50_95.point, drop.map50_95.lower, drop.map50_95.upper],
        "map50_drop": [drop.map50.point, drop.map50.lower, drop.map50.upper],
    }
