"""How often does the paired-bootstrap interval cover the drop? Checked on real detections (a development tool).

    python tools/interval_coverage.py --cache DIR --variant int8-max [--baseline fp16] [--subset 100]
        [--draws 100] [--resamples 300] [--confidence 0.95]

Takes the match tables a bench run stored for a variant and its baseline on a dataset (e.g. all
500 val500 images of yolo11n-coco), treats that dataset's drop as the truth, draws ``--draws``
subsets of ``--subset`` images from it (without replacement), and computes on each subset the
paired-bootstrap interval the gate would use (``--resamples`` resamples of the subset). Prints how
often the interval covers the full-dataset drop, the interval's mean half-width, and the bootstrap's
bias (mean resampled drop minus the subset's own drop), for the percentile interval and for the
bias-corrected percentile interval (Efron's BC). Sampling a fifth of a finite set without
replacement varies less than the bootstrap assumes (by about sqrt(1 - subset/total)), so coverage
somewhat above nominal is expected of a correct interval.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

from quantbench.build.variants import DEFAULT_VARIANTS, load_variants
from quantbench.cache import ArtifactCache
from quantbench.data.assets import default_eval_data, default_model
from quantbench.decision.uncertainty import prepare, weighted_maps
from quantbench.pipeline import Pipeline, PipelineSettings


def subset_weights(total: int, members: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, total) multiplicities: resamples of ``members`` with replacement, zero elsewhere."""
    draws = rng.choice(members, size=(resamples, len(members)))
    flat = draws + (np.arange(resamples) * total)[:, None]
    return np.bincount(flat.ravel(), minlength=resamples * total).reshape(resamples, total).astype(np.float64)


def intervals(drops: np.ndarray, point: float, confidence: float) -> dict[str, tuple[float, float]]:
    """Percentile and bias-corrected percentile intervals of the resampled ``drops`` around ``point``."""
    alpha = (1 - confidence) / 2
    normal = statistics.NormalDist()
    share_below = float(np.clip(np.mean(drops < point), 1 / len(drops), 1 - 1 / len(drops)))
    z0 = normal.inv_cdf(share_below)
    low_q, high_q = (normal.cdf(2 * z0 + normal.inv_cdf(q)) for q in (alpha, 1 - alpha))
    return {"percentile": tuple(np.quantile(drops, [alpha, 1 - alpha])),
            "bias-corrected": tuple(np.quantile(drops, [low_q, high_q]))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True, help="the bench run's cache (--qb-cache-dir)")
    parser.add_argument("--model", default=None, help="default: the offline yolo11n-coco")
    parser.add_argument("--data", type=Path, default=None, help="the evaluation data (default: val500)")
    parser.add_argument("--variant", required=True)
    parser.add_argument("--baseline", default="fp16")
    parser.add_argument("--subset", type=int, default=100)
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--resamples", type=int, default=300)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    table = {v.name: v for v in load_variants(Path(__file__).resolve().parents[1] / DEFAULT_VARIANTS)}
    settings = PipelineSettings(eval_data=args.data or default_eval_data(), backend="onnxruntime")
    pipeline = Pipeline(ArtifactCache(args.cache), settings)
    model = pipeline.model(args.model or default_model())
    variant = prepare(pipeline.matches(model, table[args.variant]))
    baseline = prepare(pipeline.matches(model, table[args.baseline]))
    total = variant.gt_counts.shape[1]
    ones = np.ones((1, total))
    truth = float(weighted_maps(baseline, ones)[0][0] - weighted_maps(variant, ones)[0][0])
    rng = np.random.default_rng(args.seed)
    covered = {"percentile": 0, "bias-corrected": 0}
    widths = {"percentile": [], "bias-corrected": []}
    biases = []
    for _ in range(args.draws):
        members = np.sort(rng.choice(total, size=args.subset, replace=False))
        own = np.zeros((1, total))
        own[0, members] = 1
        point = float(weighted_maps(baseline, own)[0][0] - weighted_maps(variant, own)[0][0])
        weights = subset_weights(total, members, args.resamples, rng)
        drops = weighted_maps(baseline, weights)[0] - weighted_maps(variant, weights)[0]
        biases.append(float(np.mean(drops)) - point)
        for name, (low, high) in intervals(drops, point, args.confidence).items():
            covered[name] += low <= truth <= high
            widths[name].append((high - low) / 2)
    print(f"{args.variant} vs {args.baseline}: drop on all {total} images {truth * 100:.2f} points; "
          f"{args.draws} subsets of {args.subset} images, {args.resamples} resamples each, {args.confidence:.0%}")
    print(f"bootstrap bias (mean resampled drop - subset drop): {statistics.fmean(biases) * 100:+.2f} points")
    for name in covered:
        print(f"{name}: covers the full-set drop in {covered[name]}/{args.draws} subsets; "
              f"mean half-width {statistics.fmean(widths[name]) * 100:.2f} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
