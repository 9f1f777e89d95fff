"""The paired bootstrap of the mAP drop (equal to pycocotools on explicitly duplicated images, covering a
known drop), the latency and speed-up intervals (coverage on lognormal rounds), the seed spread."""

from __future__ import annotations

import contextlib
import io
import statistics
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from yolo_detections import on_val500

import quantbench.decision.uncertainty as uncertainty
from quantbench.data.dataset import CocoDataset, read_instances
from quantbench.decision.uncertainty import (
    BootstrapInterval,
    images_needed,
    latency_interval,
    paired_bootstrap,
    prepare,
    resample_weights,
    seed_spread,
    speedup_interval,
    weighted_maps,
)
from quantbench.errors import DataError
from quantbench.evaluation.detections import Detections
from quantbench.evaluation.matches import MatchTable
from quantbench.evaluation.metrics import CocoEvaluator, coco_metrics_and_matches

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


@pytest.fixture(scope="module")
def val16_and_detections(assets_dir: Path, val500: Path) -> tuple[CocoDataset, dict[int, Detections]]:
    return on_val500(assets_dir, val500, 16)


@pytest.fixture(scope="module")
def val16(val16_and_detections) -> CocoDataset:
    return val16_and_detections[0]


@pytest.fixture(scope="module")
def yolo16(val16_and_detections) -> dict[int, Detections]:
    return val16_and_detections[1]


@pytest.fixture(scope="module")
def table16(val16: CocoDataset, yolo16: dict[int, Detections]) -> MatchTable:
    return coco_metrics_and_matches(val16, yolo16, CocoEvaluator.PYCOCOTOOLS)[1]


def pycocotools_on_copies(ds: CocoDataset, dets: dict[int, Detections], copies: np.ndarray) -> tuple[float, float]:
    """(mAP50-95, mAP50) by pycocotools of a dataset holding ``copies[n]`` copies of the n-th image (new ids)."""
    data = read_instances(ds.annotations)
    image_of = {image["id"]: image for image in data["images"]}
    anns_of: dict[int, list] = {}
    for ann in data["annotations"]:
        anns_of.setdefault(ann["image_id"], []).append(ann)
    category_ids = np.asarray(ds.category_ids, dtype=np.float64)
    images, anns, rows = [], [], []
    for image_id, count in zip(sorted(dets), copies.astype(int).tolist()):
        det = dets[image_id]
        boxes = det.boxes.astype(np.float64)
        for _ in range(count):
            new_id = len(images) + 1  # copies of an image get consecutive ids, images stay in order
            images.append({**image_of[image_id], "id": new_id})
            for ann in anns_of.get(image_id, []):
                anns.append({"iscrowd": 0, "area": ann["bbox"][2] * ann["bbox"][3], **ann,
                             "id": len(anns) + 1, "image_id": new_id})
            rows += [[new_id, x1, y1, x2 - x1, y2 - y1, s, category_ids[c]]
                     for (x1, y1, x2, y2), s, c in zip(boxes, det.scores.astype(np.float64), det.classes)]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns, "categories": data["categories"]}
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(np.array(rows)), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0]), float(evaluator.stats[1])


@pytest.mark.slow
def test_weighted_maps_equal_pycocotools_on_duplicated_images(val16: CocoDataset, yolo16: dict[int, Detections],
                                                              table16: MatchTable):
    weights = np.vstack([resample_weights(16, 3, seed=7), np.tile([0, 3, 1, 2], 4)])
    assert (weights == 0).any() and (weights >= 2).any()  # drops and duplicates both exercised
    got50_95, got50 = weighted_maps(table16, weights)
    for row, w in enumerate(weights):
        want50_95, want50 = pycocotools_on_copies(val16, yolo16, w)
        assert got50_95[row] == pytest.approx(want50_95, abs=1e-12)
        assert got50[row] == pytest.approx(want50, abs=1e-12)


def test_all_ones_is_the_table_itself(table16: MatchTable):
    got50_95, got50 = weighted_maps(table16, np.ones(16))
    assert got50_95[0] == pytest.approx(table16.map50_95(), abs=1e-12)
    assert got50[0] == pytest.approx(table16.map50(), abs=1e-12)


def test_paired_resamples_are_shared(table16: MatchTable):
    same = paired_bootstrap(table16, table16, resamples=200, seed=3)
    assert (same.map50_95.lower, same.map50_95.upper, same.map50.lower, same.map50.upper) == (0, 0, 0, 0)
    # an unrelated "variant": the same boxes, scores reversed within each category and image order kept
    variant = MatchTable(**{**table16.__dict__, "det_scores": 1.0 - table16.det_scores})
    drop = paired_bootstrap(variant, table16, resamples=200, seed=3)
    weights = resample_weights(16, 200, seed=3)
    drops = weighted_maps(table16, weights)[0] - weighted_maps(variant, weights)[0]
    assert (drop.map50_95.lower, drop.map50_95.upper) == pytest.approx(np.quantile(drops, [0.025, 0.975]), abs=1e-15)
    assert drop.map50_95.point == pytest.approx(table16.map50_95() - variant.map50_95(), abs=1e-15)
    assert drop.map50_95.lower <= drop.map50_95.point <= drop.map50_95.upper
    assert (drop.map50_95.images, drop.map50_95.resamples, drop.map50_95.method) == (16, 200, "percentile")


def test_tables_of_other_images_are_refused(val16: CocoDataset, yolo16: dict[int, Detections], table16: MatchTable):
    fewer = coco_metrics_and_matches(val16, dict(list(yolo16.items())[:15]))[1]
    with pytest.raises(DataError, match="cover different images"):
        paired_bootstrap(fewer, table16)
    with pytest.raises(DataError, match="weights for 3 images"):
        weighted_maps(table16, np.ones(3))
    with pytest.raises(DataError, match="resamples=1 is too few"):
        paired_bootstrap(table16, table16, resamples=1)
    with pytest.raises(DataError, match="confidence=95 is not a probability"):
        paired_bootstrap(table16, table16, confidence=95)


def synthetic_pair(rng: np.random.Generator, images: int) -> tuple[MatchTable, MatchTable]:
    """Baseline and a variant with slightly worse boxes and noisier scores on the same synthetic images."""
    categories = 2
    gt_counts = rng.poisson(2.0, size=(categories, images))
    tables = {"base": [], "var": []}
    for k in range(categories):
        gt_image = np.repeat(np.arange(images), gt_counts[k])
        found = rng.random(gt_image.size) < 0.85
        iou_base = 0.4 + 0.6 * rng.beta(6, 2, gt_image.size)
        score_base = 1 / (1 + np.exp(-rng.normal(3 * iou_base - 1, 1.0)))
        iou_var = iou_base - np.abs(rng.normal(0, 0.04, gt_image.size))
        score_var = np.clip(score_base + rng.normal(0, 0.05, gt_image.size), 1e-4, 1)
        fp_image = rng.integers(0, images, rng.poisson(1.5 * images))
        fp_score = rng.beta(1, 4, fp_image.size)
        for name, iou, score in (("base", iou_base, score_base), ("var", iou_var, score_var)):
            keep = found & (rng.random(gt_image.size) < (1.0 if name == "base" else 0.97))
            tables[name].append((np.concatenate([gt_image[keep], fp_image]),
                                 np.concatenate([score[keep], fp_score]),
                                 np.concatenate([iou[keep], np.zeros(fp_image.size)])))
    return tuple(_table(parts, gt_counts, images) for parts in (tables["var"], tables["base"]))


def _table(parts: list, gt_counts: np.ndarray, images: int) -> MatchTable:
    image, score, iou = (np.concatenate([p[i] for p in parts]) for i in range(3))
    return MatchTable(
        image_ids=np.arange(images) + 1, category_ids=np.arange(len(parts)) + 1, iou_thresholds=IOU_THRESHOLDS,
        gt_counts=gt_counts, det_offsets=np.cumsum([0] + [len(p[0]) for p in parts]), det_scores=score,
        det_images=image, det_matched=iou[None] >= IOU_THRESHOLDS[:, None],
        det_ignored=np.zeros((10, len(image)), dtype=bool))


@pytest.mark.slow  # ~15 s on an idle 2-core machine: 200 bootstraps of 150 resamples
def test_drop_interval_covers_a_known_drop():
    rng = np.random.default_rng(2024)
    # the population's drop: one very large sample (its own error is ~0.1 of a 300-image sample's)
    population_var, population_base = synthetic_pair(rng, 250_000)
    true_drop = population_base.map50_95() - population_var.map50_95()
    assert true_drop > 0.01  # a real drop to cover
    repetitions, covered, widths = 100, 0, []
    for _ in range(repetitions):
        var, base = synthetic_pair(rng, 300)
        drop = paired_bootstrap(var, base, resamples=150, seed=int(rng.integers(1 << 31))).map50_95
        covered += drop.lower <= true_drop <= drop.upper
        widths.append(drop.upper - drop.lower)
    assert 0.90 <= covered / repetitions <= 0.99
    assert np.median(widths) < true_drop  # and the drop is resolved, not just covered by a wide interval


def test_prepared_table_drops_everything_after_the_last_true_positive(table16: MatchTable):
    prepared = prepare(table16)
    tp = table16.det_matched & ~table16.det_ignored
    assert len(prepared.tp_images) == int(tp.sum())  # one point per true positive, no more


def test_images_needed_scales_the_side_facing_the_limit():
    drop = BootstrapInterval(point=0.005, lower=0.001, upper=0.009, confidence=0.95, resamples=1000, images=500)
    assert images_needed(drop, 0.010) == 320  # (0.004 / 0.005)^2 x 500: already excluded with fewer
    assert images_needed(drop, 0.006) == 8000  # (0.004 / 0.001)^2 x 500
    assert images_needed(drop, 0.004) == 8000  # the lower side, limit below the point
    assert images_needed(drop, 0.005) is None


def test_median_interval_order_statistics():
    rounds = np.arange(1.0, 11.0)[::-1]  # 10 rounds, any order
    got = latency_interval(rounds, 0.95)
    # P(Bin(10, 1/2) <= 1) = 11/1024 <= 0.025 < P(<= 2): the 2nd and 9th smallest rounds
    assert (got.lower, got.median, got.upper) == (2.0, 5.5, 9.0)
    assert got.coverage == pytest.approx(1 - 2 * 11 / 1024)
    assert latency_interval(np.arange(6.0)).lower == 0.0  # 6 rounds: the smallest 95 % interval, min to max
    with pytest.raises(DataError, match="5 latency rounds cannot give a 95% interval.*at least 6 rounds"):
        latency_interval(np.arange(5.0))


def test_median_interval_coverage_on_lognormal_rounds():
    rng = np.random.default_rng(11)
    true_median, repetitions = 10.0, 2000
    hits = [(i.lower <= true_median <= i.upper, i.coverage)
            for i in (latency_interval(rng.lognormal(np.log(true_median), 0.25, 25)) for _ in range(repetitions))]
    coverage = hits[0][1]
    observed = np.mean([hit for hit, _ in hits])
    assert coverage >= 0.95
    assert abs(observed - coverage) < 3.5 * np.sqrt(coverage * (1 - coverage) / repetitions)


def test_speedup_interval_coverage_on_lognormal_rounds():
    rng = np.random.default_rng(5)
    repetitions, covered = 300, 0
    for _ in range(repetitions):
        baseline, variant = rng.lognormal(np.log(12.0), 0.2, 40), rng.lognormal(np.log(8.0), 0.2, 40)
        got = speedup_interval(baseline, variant, resamples=400, seed=int(rng.integers(1 << 31)))
        covered += got.lower <= 1.5 <= got.upper
    assert 0.90 <= covered / repetitions <= 0.99
    assert got.point == np.median(baseline) / np.median(variant)


def test_speedup_interval_refuses_bad_rounds():
    with pytest.raises(DataError, match="variant latency rounds"):
        speedup_interval([1.0, 2.0], [1.0, -2.0])
    with pytest.raises(DataError, match="baseline latency rounds .0 values"):
        speedup_interval([], [1.0])


def test_seed_spread():
    maps = [0.3512, 0.3490, 0.3531, 0.3502]
    spread = seed_spread(maps)
    assert (spread.mean, spread.stdev) == (statistics.fmean(maps), statistics.stdev(maps))
    assert (spread.min, spread.max, spread.count) == (0.3490, 0.3531, 4)
    assert spread.range == pytest.approx(0.0041)
    with pytest.raises(DataError, match="1 calibration seed"):
        seed_spread([0.35])


@pytest.mark.slow
def test_too_large_a_table_is_refused_in_one_sentence(table16: MatchTable, monkeypatch):
    monkeypatch.setattr(uncertainty, "_MAX_DENSE_ELEMENTS", 1000)
    with pytest.raises(DataError, match=r"of 16 images has \d+ true positives.*bootstrap a subset"):
        paired_bootstrap(table16, table16)
