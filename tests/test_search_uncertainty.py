"""The split search's uncertainty: the COCO probe's match tables, drop intervals, verdicts, resolution.

yolov5n-coco (real COCO weights) in INT8 from two calib500 images (max calibration, FP32 outside
INT8: the analysis graph test_cli.py's search builds), probed on 16 other calib500 images, so every
drop and interval is measured (FP32 scores 0.3227 there, full INT8 0.3157: a drop of 0.70 points,
+-2.0 at 95 %); the gate's rule itself is also checked on hand-made intervals against `gate.judge`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from quantbench.analysis.meter import CocoProbe, GraphMeter
from quantbench.analysis.search import (
    STATE_FILE,
    SearchConfig,
    SearchHooks,
    SearchResult,
    SplitTarget,
    budget_source,
    search_markdown,
    search_split,
)
from quantbench.analysis.setup import probe_split
from quantbench.build.export import resolve_model
from quantbench.build.qdq_graph import QdqModel
from quantbench.build.quantize import quantize_variant
from quantbench.build.variants import Variant, VariantKind
from quantbench.cache import ArtifactCache
from quantbench.data.calibration import build_calibration
from quantbench.decision.gate import FAIL, INCONCLUSIVE, PASS, Evidence, drop_verdict, interval_verdict, judge
from quantbench.decision.thresholds import ModelThresholds
from quantbench.decision.uncertainty import images_needed, paired_bootstrap
from quantbench.errors import ConfigError
from quantbench.records import BootstrapInterval, CocoMetrics, DropInterval, EvalResult, EvalTiming

RESAMPLES = 200  # enough for a stable interval on 16 images, cheap
ORDER = ("/model.24/m.0/Conv", "/model.0/conv/Conv")  # a head output conv and the stem: a short search


@dataclasses.dataclass(frozen=True)
class V5n:
    fp32: Path
    qdq: QdqModel
    probe: CocoProbe


@pytest.fixture(scope="module")
def v5n(yolov5n_onnx: Path, calib500: Path, session_cache: ArtifactCache) -> V5n:
    model = resolve_model(yolov5n_onnx, session_cache)
    calib = build_calibration(calib500, 2, cache=session_cache, size=model.input_size)
    variant = Variant("int8-auto-analysis", VariantKind.INT8, calibration_method="max", calib_images=2,
                      high_precision_dtype="fp32")
    build = quantize_variant(model, variant, calib, session_cache)
    dataset = probe_split(calib500, calib, calib500 / "images", 16)
    return V5n(Path(model.path), QdqModel.load(build.onnx_path, input_size=model.input_size),
               CocoProbe(dataset, imgsz=model.input_size, batch_size=8))


@pytest.fixture(scope="module")
def probe_cache(tmp_path_factory: pytest.TempPathFactory) -> ArtifactCache:
    """The meters' cache, shared by this module's tests (each graph is evaluated once)."""
    return ArtifactCache(tmp_path_factory.mktemp("probe-cache"))


def _meter(v5n: V5n, cache: ArtifactCache) -> GraphMeter:
    return GraphMeter(v5n.qdq, cache, probe=v5n.probe)


@pytest.mark.slow
def test_the_coco_probe_keeps_match_tables_and_gives_paired_intervals(v5n: V5n, tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    int8 = v5n.qdq.group_names
    with _meter(v5n, cache) as meter:
        score, reference = meter.probe_score(int8), meter.probe_score_of_file(v5n.fp32)
        table, reference_table = meter.probe_matches(int8), meter.probe_matches_of_file(v5n.fp32)
        assert meter.measured == 2  # the tables came from the scoring evaluations themselves
        assert table.num_images == 16 and table.map50_95() == pytest.approx(score, abs=1e-9)
        assert reference_table.map50_95() == pytest.approx(reference, abs=1e-9)
        drop = meter.probe_drop(int8, v5n.fp32, resamples=RESAMPLES)
    expected = paired_bootstrap(table, reference_table, resamples=RESAMPLES, confidence=0.95, seed=0).map50_95
    assert drop == expected and drop.point == pytest.approx(reference - score, abs=1e-9)
    assert drop.lower < drop.upper and drop.images == 16

    # Scores cached before tables were kept: the score is still a cache hit, the table is measured
    # again when an interval asks for it, and comes out the same.
    for npz in (cache.root / "sensitivity").glob("*.npz*"):
        npz.unlink()
    with _meter(v5n, cache) as meter:
        assert meter.probe_score(int8) == score and meter.measured == 0
        again = meter.probe_matches(int8)
        assert meter.measured == 1
        np.testing.assert_array_equal(again.det_matched, table.det_matched)
        np.testing.assert_array_equal(again.det_scores, table.det_scores)
        assert meter.probe_drop(int8, v5n.fp32, resamples=RESAMPLES) == drop  # a cache hit
        assert meter.measured == 1


def _full_int8_drop(v5n: V5n, cache: ArtifactCache) -> tuple[float, BootstrapInterval]:
    with _meter(v5n, cache) as meter:
        return meter.probe_score_of_file(v5n.fp32), meter.probe_drop(v5n.qdq.group_names, v5n.fp32,
                                                                     resamples=RESAMPLES)


@pytest.mark.slow
def test_every_trial_states_its_interval_and_a_tiny_budget_is_warned_about(v5n: V5n, probe_cache: ArtifactCache,
                                                                          tmp_path: Path, caplog) -> None:
    reference, full = _full_int8_drop(v5n, probe_cache)
    half_width = (full.upper - full.lower) / 2
    budget = half_width / 4  # below the probe's resolution
    config = SearchConfig(min_int8_flop_share=0.0, max_steps=6, resamples=RESAMPLES)
    state = tmp_path / STATE_FILE
    with caplog.at_level(logging.WARNING, logger="quantbench.analysis.search"), _meter(v5n, probe_cache) as meter:
        outcome = search_split(meter, ORDER, SplitTarget(reference, budget, v5n.fp32), config,
                               SearchHooks(state_path=state, progress=False))
    needed = math.ceil(16 * (half_width / budget) ** 2)  # the half-width shrinks as 1/sqrt(images)
    assert needed == 16 * 16 or needed == 16 * 16 + 1  # (half / quarter)^2 up to float rounding
    warning = (f"budget {100 * budget:.2f} points is below the probe's resolution (+-{100 * half_width:.2f} points "
               f"at 95 % on 16 images): the search cannot tell such drops from noise; use --probe-images N "
               f"(about {needed} needed) or a larger budget")
    assert outcome.warnings == (warning,)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [warning]
    assert outcome.resolution.interval == full == outcome.steps[0].drop_interval

    saved = json.loads(state.read_text())["steps"]
    assert len(saved) == len(outcome.steps) >= 2
    for step, recorded in zip(outcome.steps, saved, strict=True):
        ci = step.drop_interval
        assert recorded["drop_interval"] == dataclasses.asdict(ci) and recorded["verdict"] == step.verdict
        assert ci.lower <= ci.point <= ci.upper and ci.confidence == 0.95 and ci.images == 16
        assert ci.point == pytest.approx(step.drop, abs=1e-9)  # the tables' drop is the probe's
        assert step.verdict == interval_verdict(ci, budget)

    result = SearchResult(model="yolov5n-coco", variant_name="int8-auto", outcome=outcome, variant_toml="",
                          probe=v5n.probe.description, cost_model="flops")
    markdown = search_markdown(result, v5n.qdq)
    assert f"- **Warning**: {warning}" in markdown
    assert "| probe score | drop | 95 % drop interval | within budget | verdict |" in markdown
    for step in outcome.steps:
        ci = step.drop_interval
        assert f"| {step.drop:+.5f} | {ci.lower:+.5f} to {ci.upper:+.5f} | " in markdown
    assert "accepted or rejected on its point drop" in markdown

    # A budget well above the resolution: no warning (and full INT8 already fits it).
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="quantbench.analysis.search"), _meter(v5n, probe_cache) as meter:
        wide = search_split(meter, ORDER, SplitTarget(reference, full.upper + 4 * half_width, v5n.fp32),
                            config, SearchHooks(progress=False))
    assert wide.warnings == () and not caplog.records
    assert wide.resolution.half_width == pytest.approx(half_width) and wide.verdict == PASS


@pytest.mark.slow
def test_the_verifying_build_gets_the_gates_verdict(v5n: V5n, probe_cache: ArtifactCache, tmp_path: Path) -> None:
    """The "real build" here is the INT8 analysis graph itself: its interval is known, the budget placed around it."""
    reference, _ = _full_int8_drop(v5n, probe_cache)
    built = Path(v5n.qdq.source)
    config = SearchConfig(min_int8_flop_share=0.0, max_verify=1, resamples=RESAMPLES)
    with _meter(v5n, probe_cache) as meter:
        ci = meter.probe_drop_of_file(built, v5n.fp32, resamples=RESAMPLES)

        def search(budget: float):
            return search_split(meter, (), SplitTarget(reference, budget, v5n.fp32), config,
                                SearchHooks(verify=lambda excluded: built, progress=False))

        straddling = search((ci.point + ci.upper) / 2)  # point within, the interval's top beyond
        clear = search(ci.upper + 0.001)
    assert straddling.steps[-1].action == "verify" and straddling.drop_interval == ci
    assert straddling.met_budget and straddling.verdict == INCONCLUSIVE
    assert straddling.images_needed == images_needed(ci, (ci.point + ci.upper) / 2) > 16
    result = SearchResult(model="yolov5n-coco", variant_name="int8-auto", outcome=straddling, variant_toml="",
                          probe=v5n.probe.description, cost_model="flops")
    assert (f"verdict inconclusive: drop {ci.point:+.5f}, 95 % interval {ci.lower:+.5f} to {ci.upper:+.5f} on 16 "
            f"probe images" in search_markdown(result, v5n.qdq))
    assert f"about {straddling.images_needed} probe images would likely decide it" in search_markdown(result, v5n.qdq)
    assert clear.verdict == PASS and clear.images_needed is None


def _eval(variant: str, map50_95: float) -> EvalResult:
    return EvalResult(model="m", variant=variant, backend="onnxruntime", device="CPU", dataset="probe",
                      num_images=200, skipped_images=(), untrained=False,
                      metrics=CocoMetrics(map50_95, map50_95 * 1.4, map50_95, 0.1, 0.2, 0.3, 0.4),
                      timing=EvalTiming(inference_s=1.0, total_s=2.0, images_per_s=250.0))


@pytest.mark.parametrize(("lower", "upper", "verdict"), [
    (0.001, 0.0045, PASS),
    (0.0051, 0.009, FAIL),
    (0.002, 0.007, INCONCLUSIVE),
    (0.001, 0.005, PASS),  # the top exactly on the budget is within it
])
def test_a_search_verdict_is_the_gates_verdict(lower: float, upper: float, verdict: str) -> None:
    budget, point = 0.005, (lower + upper) / 2
    ci = BootstrapInterval(point=point, lower=lower, upper=upper, confidence=0.95, resamples=1000, images=200)
    # The bench gate on the same interval, with a limit equal to the budget (the relative limit out of the way).
    gate = judge(Evidence(model="m", variant="int8", backend="onnxruntime", accuracy=_eval("int8", 0.40 - point),
                          baseline_accuracy=_eval("fp32", 0.40), drop=DropInterval(ci, ci, None),
                          judge_latency=False),
                 ModelThresholds(baseline="fp32", max_abs_drop=budget, max_rel_drop=1.0))
    assert drop_verdict(point, ci, budget) == gate.accuracy_verdict == verdict
    # Without an interval (a label-free probe) the point alone decides, as the gate's "point" mode.
    assert drop_verdict(point, None, budget) == (PASS if point <= budget else FAIL)


def test_search_config_checks_its_interval_settings() -> None:
    assert SearchConfig().drop_confidence == 0.95 and SearchConfig(confidence=0.9).drop_confidence == 0.9
    for bad in (95, 0.3, 1.0, True):
        with pytest.raises(ConfigError, match="confidence="):
            SearchConfig(confidence=bad)
    with pytest.raises(ConfigError, match="resamples=1 "):
        SearchConfig(resamples=1)


def test_the_interval_settings_come_from_the_command_line_or_thresholds_toml(tmp_path: Path) -> None:
    from quantbench.analysis.cli import search_config
    from quantbench.cli import build_parser

    assert search_config(build_parser().parse_args(["search"])) == SearchConfig()  # confidence None, 1000 resamples
    given = search_config(build_parser().parse_args(["search", "--confidence", "0.9", "--resamples", "500"]))
    assert (given.confidence, given.resamples) == (0.9, 500)
    thresholds = tmp_path / "thresholds.toml"
    thresholds.write_text("max_abs_drop = 0.02\nconfidence = 0.9\n[model.m]\nmax_abs_drop = 0.004\n")
    assert budget_source(thresholds)("m") == (0.004, 0.9)  # the gate's level for the gate's budget
    assert budget_source(0.01)("m") == (0.01, 0.95)  # a budget given by hand: the default level
