"""report.md as a CI step summary: the verdict first, then the tables, and never over 65 000 characters."""

from __future__ import annotations

from pathlib import Path

from quantbench.decision.selection import select
from quantbench.decision.thresholds import Thresholds
from quantbench.outputs.report import SUMMARY_LIMIT, fit_markdown, report_markdown, write_report
from quantbench.records import CocoMetrics, EvalResult, EvalTiming, LatencyResult, LatencyStats

THRESHOLDS = Thresholds.from_mapping({"baseline": "fp16"})


def _eval(variant: str, map50_95: float, model: str = "yolov5n-coco") -> EvalResult:
    return EvalResult(model=model, variant=variant, backend="onnxruntime", device="CPU", dataset="val500",
                      num_images=500, skipped_images=(), untrained=False,
                      metrics=CocoMetrics(map50_95, map50_95 * 1.6, map50_95, 0.1, 0.2, 0.3, 0.35),
                      timing=EvalTiming(inference_s=10.0, total_s=12.0, images_per_s=41.7))


def _lat(variant: str, median_ms: float, model: str = "yolov5n-coco") -> LatencyResult:
    return LatencyResult(model=model, variant=variant, backend="onnxruntime", device="CPU", batch_size=1,
                         host=LatencyStats(median_ms, median_ms, median_ms, median_ms, 0.0, 20),
                         images_per_s=1000.0 / median_ms)


def test_the_verdict_comes_first_then_the_table(tmp_path: Path):
    passing = select([_eval("fp16", 0.2427), _eval("int8", 0.2400)], [_lat("fp16", 40.0), _lat("int8", 30.0)], THRESHOLDS)
    md = write_report(passing, tmp_path, rebuild_command="make bench")["report"].read_text()
    lines = md.splitlines()
    assert lines[0] == "# quantbench selection" and lines[2].startswith("**PASS**: no gated variant is beyond its budget")
    assert md.index("| variant | mAP50-95 |") < md.index("## How to read it") < md.index("![latency vs mAP50-95]")

    failing = select([_eval("fp16", 0.2427), _eval("int8", 0.2000)], [_lat("fp16", 40.0), _lat("int8", 30.0)], THRESHOLDS)
    verdict = report_markdown(failing, rebuild_command="make bench").splitlines()[2]
    assert verdict == "**FAIL**: 1 gated variant(s) miss their budget: yolov5n-coco int8 on onnxruntime."


def test_a_huge_report_is_cut_under_the_summary_limit_with_a_note():
    # 60 models x 40 variants, each with a long failure reason: far over GitHub's summary limit.
    evals, lats, options = [], [], {}
    for m in range(60):
        model = f"model-{m:02d}-" + "x" * 40
        options[model, "fp16"] = {"notes": "n" * 3000}
        evals.append(_eval("fp16", 0.30, model))
        lats.append(_lat("fp16", 40.0, model))
        for v in range(40):
            evals.append(_eval(f"int8-variant-{v:02d}", 0.10, model))
            lats.append(_lat(f"int8-variant-{v:02d}", 30.0, model))
    selections = select(evals, lats, THRESHOLDS, variant_options=options)
    full = report_markdown(selections, rebuild_command="make bench", limit=10**9)
    assert len(full) > 10 * SUMMARY_LIMIT
    md = report_markdown(selections, rebuild_command="make bench")
    assert len(md) <= SUMMARY_LIMIT
    assert md.splitlines()[2].startswith("**FAIL**: 2400 gated variant(s) miss their budget")
    assert md.rstrip().endswith("every outcome is in selection.json beside this file._")
    assert f"the whole report has {len(full)})" in md
    assert sum(line.startswith("```") for line in md.splitlines()) % 2 == 0  # no code block left open


def test_fit_closes_a_cut_code_block_and_leaves_short_text_alone():
    text = "# title\n\n```json\n" + "\n".join(f'"key{i}": {i},' for i in range(5000)) + "\n```\n"
    cut = fit_markdown(text, 2000)
    assert len(cut) <= 2000 and cut.startswith("# title\n\n```json\n")
    body = cut.split("\n\n_Report truncated", 1)[0]
    assert body.endswith("\n```") and body.count("```") == 2
    assert fit_markdown("short", 2000) == "short"


def test_the_verdict_of_a_simulated_run_says_so_first():
    """A run on the TensorRT test fake must not open with a plain PASS on a CI page."""
    import dataclasses

    (real,) = select([_eval("fp16", 0.2427), _eval("int8", 0.2400)], [_lat("fp16", 40.0), _lat("int8", 30.0)], THRESHOLDS)
    fake = dataclasses.replace(real, simulated="fake TensorRT 10.16.1.11")
    verdict = report_markdown([fake], rebuild_command="make bench").splitlines()[2]
    assert verdict.startswith("SIMULATED (fake TensorRT 10.16.1.11), not a measurement: **PASS**: no gated variant is beyond")
    assert report_markdown([real], rebuild_command="make bench").splitlines()[2].startswith("**PASS**")
