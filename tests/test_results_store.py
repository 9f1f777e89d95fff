"""The results store: content-keyed evaluation results and the per-run ledger, on hand-made records."""

from __future__ import annotations

import dataclasses
import multiprocessing
from pathlib import Path

import pytest

from quantbench.cache import ArtifactCache
from quantbench.decision.results_store import EvalSettings, ResultsStore, eval_key
from quantbench.evaluation.detections import NmsConfig
from quantbench.records import CocoMetrics, EvalResult, EvalTiming, LatencyResult, LatencyStats, VariantBuild


def _eval(variant: str = "int8-max", map50_95: float = 0.2322) -> EvalResult:
    return EvalResult(
        model="yolov5n-coco", variant=variant, backend="onnxruntime", device="CPU", dataset="val500[:8]",
        num_images=8, skipped_images=(), untrained=False,
        metrics=CocoMetrics(map50_95, 0.39, 0.25, 0.1, 0.3, 0.4, 0.33, {"person": 0.4}),
        timing=EvalTiming(inference_s=0.5, total_s=0.7, images_per_s=11.4),
    )


def _build(variant: str, kind: str, cached: bool) -> VariantBuild:
    return VariantBuild(
        model="yolov5n-coco", variant=variant, kind=kind, onnx_path=f"/cache/{variant}.onnx", onnx_sha256="ab" * 32,
        base_sha256="cd" * 32, options={"kind": kind}, quantized_nodes=86 if kind == "int8" else 0,
        excluded_nodes=(), seconds=7.0, cached=cached, modelopt_version="0.47",
    )


KEY_PARTS = {"onnx_sha256": "a" * 64, "dataset_fingerprint": "f" * 20, "backend": "onnxruntime", "device": "CPU",
             "settings": EvalSettings()}


@pytest.mark.parametrize(
    "change",
    [{"onnx_sha256": "b" * 64}, {"dataset_fingerprint": "e" * 20}, {"backend": "tensorrt"}, {"device": "H100"},
     {"settings": EvalSettings(batch_size=8)}, {"settings": EvalSettings(nms=NmsConfig(iou=0.6))}],
    ids=["onnx", "dataset", "backend", "device", "batch", "nms"],
)
def test_every_part_of_the_content_changes_the_eval_key(change):
    assert eval_key(**KEY_PARTS) == eval_key(**KEY_PARTS)
    assert eval_key(**{**KEY_PARTS, **change}) != eval_key(**KEY_PARTS)


def test_second_request_reads_the_stored_result_and_evaluates_nothing(cache: ArtifactCache):
    store = ResultsStore(cache)
    key = eval_key(**KEY_PARTS)
    assert store.lookup(key, model="yolov5n-coco", variant="int8-max") is None
    first = store.get_or_evaluate(key, _eval, model="yolov5n-coco", variant="int8-max")

    def must_not_run() -> EvalResult:
        raise AssertionError("evaluated twice")

    second = store.get_or_evaluate(key, must_not_run, model="yolov5n-coco", variant="int8-max")
    assert (first.computed, second.computed) == (True, False)
    assert second.result == first.result == _eval()


def test_a_stored_result_is_returned_under_the_names_asked_for(cache: ArtifactCache):
    # Two variant names for one ONNX share the result; the record still says which variant it is.
    store = ResultsStore(cache)
    key = eval_key(**KEY_PARTS)
    store.get_or_evaluate(key, lambda: _eval("fp32"), model="yolov5n-coco", variant="fp32")
    alias = store.lookup(key, model="yolov5n-coco", variant="fp32-copy")
    assert alias == dataclasses.replace(_eval("fp32"), variant="fp32-copy")


def test_a_failed_evaluation_stores_nothing(cache: ArtifactCache):
    store = ResultsStore(cache)
    key = eval_key(**KEY_PARTS)

    def broken() -> EvalResult:
        raise RuntimeError("runner died")

    with pytest.raises(RuntimeError, match="runner died"):
        store.get_or_evaluate(key, broken, model="yolov5n-coco", variant="int8-max")
    assert store.lookup(key, model="yolov5n-coco", variant="int8-max") is None


def _evaluate_in_process(root: str, marker_dir: str) -> bool:
    def evaluate() -> EvalResult:
        Path(marker_dir, f"evaluated-{multiprocessing.current_process().pid}").touch()
        return _eval()

    return ResultsStore(ArtifactCache(root)).get_or_evaluate(
        eval_key(**KEY_PARTS), evaluate, model="yolov5n-coco", variant="int8-max").computed


def test_concurrent_processes_evaluate_a_key_once(tmp_path: Path):
    markers = tmp_path / "markers"
    markers.mkdir()
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        computed = pool.starmap(_evaluate_in_process, [(str(tmp_path / "cache"), str(markers))] * 3)
    assert sorted(computed) == [False, False, True]
    assert len(list(markers.iterdir())) == 1


def test_ledger_joins_the_records_of_every_process(cache: ArtifactCache):
    ledger = ResultsStore(cache).ledger("run-1")
    # gw0 evaluated the baseline, gw1 read it back for its own drop: one result, computed once.
    ledger.add_eval(_eval("fp16", 0.2427), computed=True, variant_options={"kind": "fp16"}, process="gw0")
    ledger.add_eval(_eval("fp16", 0.2427), computed=False, variant_options={"kind": "fp16"}, process="gw1")
    ledger.add_eval(_eval("int8-max"), computed=True, variant_options={"kind": "int8"}, process="gw1")
    ledger.add_build(_build("fp16", "fp16", cached=False), process="gw0")
    ledger.add_build(_build("fp16", "fp16", cached=True), process="gw1")
    ledger.add_build(_build("fp32", "fp32", cached=False), process="gw1")  # the base model: no ModelOpt run
    ledger.add_failure("yolov5n-coco", "int8-per-node", "ModelOpt failed to build variant 'int8-per-node'")
    stats = LatencyStats.from_samples([30.0, 31.0, 35.0])
    ledger.add_latency(LatencyResult("yolov5n-coco", "fp16", "onnxruntime", "CPU", 1, stats, 32.3))
    (ledger.root / ".latency-x.json.tmp.json").write_text("{half a fil")  # an atomic write in flight

    records = ledger.read()
    assert sorted(e.variant for e in records.evals) == ["fp16", "int8-max"]
    assert sorted(records.evals_computed) == [("yolov5n-coco", "fp16"), ("yolov5n-coco", "int8-max")]
    assert records.variants_built == (("yolov5n-coco", "fp16"),)
    assert records.failures == {("yolov5n-coco", "int8-per-node"): "ModelOpt failed to build variant 'int8-per-node'"}
    assert records.variant_options == {("yolov5n-coco", "fp16"): {"kind": "fp16"}, ("yolov5n-coco", "int8-max"): {"kind": "int8"}}
    assert [(r.variant, r.host.median_ms) for r in records.latencies] == [("fp16", 31.0)]

    ledger.remove()
    assert ledger.read().evals == () and not ledger.root.exists()


def test_latency_stats_summarise_raw_samples():
    stats = LatencyStats.from_samples([4.0, 1.0, 2.0, 3.0])
    assert (stats.median_ms, stats.mean_ms, stats.min_ms, stats.max_ms, stats.rounds) == (2.5, 2.5, 1.0, 4.0, 4)
    assert stats.stddev_ms == pytest.approx(1.2909944)
    assert LatencyStats.from_samples([5.0]).stddev_ms == 0.0
    with pytest.raises(ValueError, match="no latency samples"):
        LatencyStats.from_samples([])


def test_ledgers_of_killed_sessions_are_removed_and_kept_or_live_ones_stay(tmp_path: Path):
    import subprocess
    import sys

    from quantbench.cache import atomic_write_text, owner_tag

    store = ResultsStore(ArtifactCache(tmp_path / "cache"))
    live, killed, kept = store.ledger("live"), store.ledger("killed"), store.ledger("kept")
    for ledger in (live, killed, kept):
        ledger.add_eval(_eval(), computed=True, variant_options={}, process="serial")
        ledger.claim()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_tag = f"{gone.stdout.strip()}-{owner_tag().split('-')[1]}"  # a process of this machine that has ended
    for ledger in (killed, kept):
        atomic_write_text(ledger.root / ledger.OWNER, dead_tag)
    kept.keep("the report could not be written")
    assert store.remove_orphan_ledgers() == [killed.root]
    assert live.root.is_dir() and kept.root.is_dir() and not killed.root.exists()
    assert [e.variant for e in kept.read().evals] == ["int8-max"]  # a kept ledger still reads back whole
