"""How sure a verdict is: a paired bootstrap of the mAP drop, intervals of latency and speed-up.

**mAP drop.** A variant and its baseline are scored on the same images, so their mAPs share most
of their sampling noise: ``paired_bootstrap`` resamples the images with replacement and scores
BOTH on the same resample, from their ``matches.MatchTable`` (no re-matching: an image drawn w
times counts its detections and its ground truth w times, which is what scoring a dataset holding
w copies of it gives; tested against pycocotools on such datasets). The interval is the
percentile interval of the resampled drops.

How the resamples are scored fast, and still exactly as ``COCOeval.accumulate`` would:

* per (category, IoU threshold) the detections are sorted once (a stable mergesort by score, as
  ``accumulate`` sorts); a resample only reweights them, it never reorders them;
* only the true positives matter. Interpolated precision at recall r is the highest precision at
  any point of recall >= r; recall grows only at a true positive, and a false positive's precision
  is below that of the point before it, so the 101 recall thresholds only ever read the precision
  of true positives. What a false positive changes is the false-positive count at every later
  true positive: that count is one matrix product, (images x true positives) counts by the
  resamples' weights. Detections after the last true positive drop out entirely;
* a recall threshold r is reached at the first true positive with recall >= r, so each true
  positive adds its (suffix-maximum) precision once for every threshold its recall passes that
  the previous one's did not: 101-point sums without a search per threshold.

**Latency.** ``latency_interval``: the distribution-free (binomial, order-statistic) interval of
a median; ``speedup_interval``: the percentile bootstrap of baseline median / variant median over
independently resampled rounds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from quantbench.errors import DataError
from quantbench.evaluation.matches import RECALL_THRESHOLDS, MatchTable
from quantbench.records import BootstrapInterval, DropInterval, SeedSpread

DROP_INTERVAL_METHOD = "percentile"  # of `paired_bootstrap`'s intervals; part of cached comparisons' keys
_CHUNK_ELEMENTS = 4_000_000  # true positives x resamples per chunk: ~32 MB per float64 array
# PreparedTable.fp_before is dense, (true positives x images) float32: 56 MB for yolo11n-coco on 500
# val500 images, growing with the square of the images (~5 GB for 5000); refused beyond 1 GiB.
_MAX_DENSE_ELEMENTS = 2**28


@dataclass(frozen=True)
class PreparedTable:
    """A MatchTable reduced to its true positives, row by row (a row = one category, IoU threshold)."""

    tp_images: np.ndarray  # (points,) image index of each true positive, rows one after another
    fp_before: np.ndarray  # (points, images) float32: false positives of each image before the point
    row_starts: np.ndarray  # (rows,) first point of each non-empty row
    row_lengths: np.ndarray  # (rows,)
    row_category: np.ndarray  # (rows,) category index
    row_is_map50: np.ndarray  # (rows,) bool: the row's IoU threshold is 0.50
    point_category: np.ndarray  # (points,) category index
    gt_counts: np.ndarray  # (categories, images) float64
    thresholds: int  # IoU thresholds


def prepare(table: MatchTable) -> PreparedTable:
    """Sort each category once and keep its true positives (see the module's docstring)."""
    tp_images, fp_images, fp_next_point, row_starts, row_lengths, row_category, row_threshold = \
        [], [], [], [], [], [], []
    points = 0
    for k in range(len(table.category_ids)):
        rows = table.category_rows(k)
        order = np.argsort(-table.det_scores[rows], kind="mergesort")  # accumulate's order
        images = table.det_images[rows][order]
        matched, ignored = table.det_matched[:, rows][:, order], table.det_ignored[:, rows][:, order]
        for t in range(len(table.iou_thresholds)):
            tp = matched[t] & ~ignored[t]
            fp = ~matched[t] & ~ignored[t]
            tp_at = np.flatnonzero(tp)
            if not tp_at.size:
                continue
            # index (within the row) of the first true positive after each false positive
            fp_at = np.flatnonzero(fp[:tp_at[-1]])
            tp_images.append(images[tp_at])
            fp_images.append(images[fp_at])
            fp_next_point.append(points + np.searchsorted(tp_at, fp_at))
            row_starts.append(points)
            row_lengths.append(tp_at.size)
            row_category.append(k)
            row_threshold.append(t)
            points += tp_at.size
    num_images = table.num_images
    if points * num_images > _MAX_DENSE_ELEMENTS:
        raise DataError(
            f"the match table of {num_images} images has {points} true positives: its bootstrap table "
            f"(true positives x images) would take {points * num_images * 4 / 2**30:.1f} GiB; "
            "bootstrap a subset of about 1500 images or fewer.")
    # fp_before[j, i]: a false positive of image i counts at every later point of its row:
    # +1 at its next true positive, -1 at the end of its row, then a running sum down the points.
    steps = np.zeros((points + 1, num_images), dtype=np.float32)
    row_end = np.repeat(np.add(row_starts, row_lengths), [len(f) for f in fp_images]).astype(np.int64)
    fp_images_all = np.concatenate(fp_images) if fp_images else np.zeros(0, dtype=np.int64)
    fp_next_all = np.concatenate(fp_next_point) if fp_next_point else np.zeros(0, dtype=np.int64)
    np.add.at(steps, (fp_next_all, fp_images_all), 1.0)
    np.add.at(steps, (row_end, fp_images_all), -1.0)
    row_category_arr = np.asarray(row_category, dtype=np.int64)
    return PreparedTable(
        tp_images=np.concatenate(tp_images) if tp_images else np.zeros(0, dtype=np.int64),
        fp_before=np.cumsum(steps, axis=0)[:points],
        row_starts=np.asarray(row_starts, dtype=np.int64),
        row_lengths=np.asarray(row_lengths, dtype=np.int64),
        row_category=row_category_arr,
        row_is_map50=table.iou_thresholds[np.asarray(row_threshold, dtype=np.int64)] == 0.5,
        point_category=np.repeat(row_category_arr, row_lengths),
        gt_counts=table.gt_counts.astype(np.float64),
        thresholds=len(table.iou_thresholds),
    )


def weighted_maps(table: MatchTable | PreparedTable, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mAP50-95, mAP50) of each row of ``weights`` (resamples x images: how often each image counts).

    Weights are whole counts (0, 1, 2, ...). A weight w scores the images as a dataset holding w
    copies of each would score under pycocotools (to 1e-9 and better, tested); all ones gives the
    table's own mAPs. -1 where no category has ground truth in a resample, as pycocotools reports it.
    """
    prepared = prepare(table) if isinstance(table, MatchTable) else table
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if weights.shape[1] != prepared.gt_counts.shape[1]:
        raise DataError(f"weights for {weights.shape[1]} images were given for a match table of "
                        f"{prepared.gt_counts.shape[1]} images; pass one weight per image of the table.")
    chunk = max(1, _CHUNK_ELEMENTS // max(1, len(prepared.tp_images)))
    parts = [_chunk_maps(prepared, weights[start:start + chunk]) for start in range(0, len(weights), chunk)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _chunk_maps(prepared: PreparedTable, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    by_image = np.ascontiguousarray(weights.T)  # (images, resamples): points x resamples below
    npig = prepared.gt_counts @ by_image  # (categories, resamples) non-ignored ground truth
    ap_sums = np.zeros((2, *npig.shape))  # [0.50:0.95, 0.50] sums of the 101 precisions
    if len(prepared.tp_images):
        row_sums = _row_precision_sums(prepared, by_image, npig)
        for out, rows in ((ap_sums[0], slice(None)), (ap_sums[1], prepared.row_is_map50)):
            np.add.at(out, prepared.row_category[rows], row_sums[rows])
    valid = npig > 0
    points = len(RECALL_THRESHOLDS)
    ap = ap_sums / np.array([prepared.thresholds * points, points])[:, None, None]
    counted = valid.sum(axis=0)
    maps = np.where(counted > 0, (ap * valid).sum(axis=1) / np.maximum(counted, 1), -1.0)
    return maps[0], maps[1]


def _row_precision_sums(prepared: PreparedTable, by_image: np.ndarray, npig: np.ndarray) -> np.ndarray:
    """(rows, resamples): the sum of a row's 101 interpolated precisions, as accumulate fills them."""
    starts, lengths = prepared.row_starts, prepared.row_lengths
    # (points, resamples) arrays of millions of values: computed in place where possible
    tp = np.cumsum(by_image[prepared.tp_images], axis=0)  # weighted true positives so far, exact integers
    before_row = tp[np.maximum(starts - 1, 0)]
    before_row[starts == 0] = 0.0
    tp -= np.repeat(before_row, lengths, axis=0)
    # float32 products of integer counts below 2**24 are exact
    precision = (prepared.fp_before @ by_image.astype(np.float32)).astype(np.float64)
    precision += tp
    precision += np.spacing(1)
    np.divide(tp, precision, out=precision)  # accumulate's tp / (fp + tp + eps), operation for operation
    # a category without ground truth in a resample has no weighted true positive either: any divisor
    recall = np.where(npig > 0, npig, 1.0)[prepared.point_category]
    np.divide(tp, recall, out=recall)
    passed = np.searchsorted(RECALL_THRESHOLDS, recall, side="right").astype(np.int32)  # thresholds <= recall
    newly_passed = np.empty_like(passed)
    np.subtract(passed[1:], passed[:-1], out=newly_passed[1:])
    newly_passed[starts] = passed[starts]
    for start, length in zip(starts.tolist(), lengths.tolist()):
        rows = precision[start:start + length]
        rows[:] = np.maximum.accumulate(rows[::-1], axis=0)[::-1]  # the precision envelope
    np.multiply(precision, newly_passed, out=precision)
    return np.add.reduceat(precision, starts, axis=0)


def resample_weights(images: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, images): how often each image is drawn in each resample (with replacement)."""
    draws = np.random.default_rng(seed).integers(0, images, size=(resamples, images))
    flat = draws + (np.arange(resamples) * images)[:, None]
    return np.bincount(flat.ravel(), minlength=resamples * images).reshape(resamples, images).astype(np.float64)


def paired_bootstrap(variant: MatchTable, baseline: MatchTable, *, resamples: int = 1000,
                     confidence: float = 0.95, seed: int = 0) -> DropInterval:
    """Percentile intervals of the mAP drops (baseline - variant), both scored on the same resamples.

    The points are the full-sample drops of ``MatchTable.map50_95``/``map50`` (pycocotools'
    numbers). DataError when the tables were not scored on the same images and categories.
    """
    _check_paired(variant, baseline)
    _check_resamples(resamples)
    _check_confidence(confidence)
    weights = resample_weights(variant.num_images, resamples, seed)
    variant_50_95, variant_50 = weighted_maps(variant, weights)
    baseline_50_95, baseline_50 = weighted_maps(baseline, weights)
    quantiles = [(1 - confidence) / 2, (1 + confidence) / 2]

    def interval(point: float, drops: np.ndarray) -> BootstrapInterval:
        lower, upper = np.quantile(drops, quantiles)
        return BootstrapInterval(point=float(point), lower=float(lower), upper=float(upper), confidence=confidence,
                                 resamples=resamples, images=variant.num_images)

    point_drop = baseline.map50_95() - variant.map50_95()
    relative = None
    if baseline.map50_95() > 0 and np.all(baseline_50_95 > 0):
        relative = interval(point_drop / baseline.map50_95(), (baseline_50_95 - variant_50_95) / baseline_50_95)
    return DropInterval(
        map50_95=interval(point_drop, baseline_50_95 - variant_50_95),
        map50=interval(baseline.map50() - variant.map50(), baseline_50 - variant_50),
        map50_95_relative=relative,
    )


def images_needed(interval: BootstrapInterval, limit: float) -> int | None:
    """Images at which ``interval`` would exclude ``limit``, its width shrinking as 1/sqrt(images).

    The side of the interval facing the limit is scaled; fewer images than the interval's own
    mean it already excludes the limit. None when the point equals the limit (never decided).
    """
    gap = limit - interval.point
    if gap == 0:
        return None
    half_width = (interval.upper - interval.point) if gap > 0 else (interval.point - interval.lower)
    return max(1, math.ceil(interval.images * (half_width / gap) ** 2))


def _check_paired(variant: MatchTable, baseline: MatchTable) -> None:
    same = (np.array_equal(variant.image_ids, baseline.image_ids)
            and np.array_equal(variant.category_ids, baseline.category_ids)
            and np.array_equal(variant.iou_thresholds, baseline.iou_thresholds))
    if not same:
        only = sorted(set(variant.image_ids.tolist()) ^ set(baseline.image_ids.tolist()))
        raise DataError(f"the variant and baseline match tables cover different images or categories "
                        f"({len(only)} image ids in only one, e.g. {only[:3]}); score both on the same images.")


def _check_resamples(resamples: int) -> None:
    if not isinstance(resamples, int) or resamples < 2:
        raise DataError(f"resamples={resamples!r} is too few for an interval; pass 1000 or more.")


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise DataError(f"confidence={confidence!r} is not a probability; pass e.g. 0.95.")


@dataclass(frozen=True)
class MedianInterval:
    """The median of latency rounds and its distribution-free (order-statistic) interval."""

    median: float
    lower: float
    upper: float
    confidence: float  # asked for
    coverage: float  # the binomial coverage the chosen order statistics give (>= confidence)
    samples: int


def latency_interval(samples_ms: Sequence[float], confidence: float = 0.95) -> MedianInterval:
    """Interval of the median from the sorted rounds: [x_(k), x_(n+1-k)] with Binomial(n, 1/2) coverage.

    Holds for any continuous distribution of independent rounds. DataError when the rounds are
    too few for ``confidence`` (6 for 95 %).
    """
    _check_confidence(confidence)
    values = np.sort(np.asarray(samples_ms, dtype=np.float64))
    n = len(values)
    k = _order_statistic_rank(n, confidence)
    if k == 0:
        raise DataError(f"{n} latency rounds cannot give a {confidence:.0%} interval of the median; "
                        f"time at least {_rounds_needed(confidence)} rounds.")
    return MedianInterval(median=float(np.median(values)), lower=float(values[k - 1]), upper=float(values[n - k]),
                          confidence=confidence, coverage=1 - 2 * _binomial_half_cdf(n, k - 1), samples=n)


def _binomial_half_cdf(n: int, k: int) -> float:
    """P(Binomial(n, 1/2) <= k), exact (integer arithmetic)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n


def _order_statistic_rank(n: int, confidence: float) -> int:
    """Largest k (1-based) with P(B <= k - 1) <= (1 - confidence) / 2; 0 when even k = 1 is too wide a bet."""
    alpha_half = (1 - confidence) / 2
    k, tail, term = 0, 0, 1  # tail = sum of comb(n, i) for i < k; term = comb(n, k)
    while k < n // 2 + 1 and (tail + term) / 2 ** n <= alpha_half:
        tail += term
        k += 1
        term = term * (n - k + 1) // k
    return k


def _rounds_needed(confidence: float) -> int:
    n = 1
    while _order_statistic_rank(n, confidence) == 0:
        n += 1
    return n


def speedup_interval(baseline_samples: Sequence[float], variant_samples: Sequence[float], *,
                     confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> BootstrapInterval:
    """Percentile bootstrap of baseline median / variant median, the two sets of rounds resampled apart.

    ``images`` of the result is the smaller number of rounds. DataError on an empty or
    non-positive set of rounds.
    """
    _check_resamples(resamples)
    _check_confidence(confidence)
    baseline, variant = (_positive_rounds(s, what) for s, what in
                         ((baseline_samples, "baseline"), (variant_samples, "variant")))
    rng = np.random.default_rng(seed)
    baseline_medians = np.median(rng.choice(baseline, size=(resamples, len(baseline))), axis=1)
    variant_medians = np.median(rng.choice(variant, size=(resamples, len(variant))), axis=1)
    lower, upper = np.quantile(baseline_medians / variant_medians, [(1 - confidence) / 2, (1 + confidence) / 2])
    return BootstrapInterval(point=float(np.median(baseline) / np.median(variant)), lower=float(lower),
                             upper=float(upper), confidence=confidence, resamples=resamples,
                             images=min(len(baseline), len(variant)))


def _positive_rounds(samples: Sequence[float], what: str) -> np.ndarray:
    values = np.asarray(samples, dtype=np.float64)
    if values.ndim != 1 or not values.size or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise DataError(f"the {what} latency rounds ({values.size} values) are empty or hold a value that is "
                        "not a positive time; pass the raw rounds in milliseconds.")
    return values


def seed_spread(maps: Sequence[float]) -> SeedSpread:
    """Summary of the K seeds' mAPs; DataError for fewer than two (no spread to speak of)."""
    values = [float(v) for v in maps]
    if len(values) < 2:
        raise DataError(f"{len(values)} calibration seed(s) give no spread; build the variant from at least "
                        "two seeded calibration subsets.")
    return SeedSpread(mean=statistics.fmean(values), min=min(values), max=max(values),
                      stdev=statistics.stdev(values), count=len(values))
