"""The real bench suite (`pytest bench`), run in subprocesses on a tiny configuration.

yolov5n-coco from QUANTBENCH_ASSETS, 8 evaluation and 8 calibration images, ONNX Runtime on the
CPU, 3 timed rounds, and a small variant table: fp32, fp16 (the baseline), int8-extreme ("extreme
INT8": Q/DQ on Sigmoid, Mul, Concat, ... too; measured here, it scores 0.0 mAP50-95 on these 8
images, so it must fail the gate), int8-extreme-explore (the same build, not gated), and
int8-per-node, which ModelOpt cannot build for this dynamic-batch model ("Incomplete symbolic shape
inference") - a real failure, not a mock.

The expensive runs (each builds variants with ModelOpt and evaluates them) are shared by several
tests through module-scoped fixtures that run pytest in a subprocess (pytester is function-
scoped); the cheap start-up checks use pytester. Which outcome each test had is read from the
run's JUnit XML, what was built and evaluated from the suite's own summary lines (derived from
the artefact cache's ``built`` flags and the results store).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
pytestmark = pytest.mark.slow

VARIANTS = """
[[variant]]
name = "fp32"
kind = "fp32"

[[variant]]
name = "fp16"
kind = "fp16"
calib_images = 8

[[variant]]
name = "int8-extreme"
kind = "int8"
calibration_method = "max"
calib_images = 8
op_types_to_quantize = [EXTREME]

[[variant]]
name = "int8-extreme-explore"
kind = "int8"
calibration_method = "max"
calib_images = 8
op_types_to_quantize = [EXTREME]
gated = false
description = "int8-extreme under another name, not gated: same cached build and stored accuracy, an xfail."

[[variant]]
name = "int8-per-node"
kind = "int8"
calibrate_per_node = true
calib_images = 8
description = "ModelOpt fails on it for yolov5n-coco (dynamic batch): the failing variant of these tests."
"""
EXTREME_OPS = ("Conv", "Add", "Mul", "Sigmoid", "Concat", "MaxPool", "Resize", "Sub", "Div", "Reshape",
               "Transpose", "Split", "Slice", "Pow")
VARIANTS = VARIANTS.replace("EXTREME", ", ".join(f'"{op}"' for op in EXTREME_OPS))
BUILDABLE = "fp32,fp16,int8-extreme"


@dataclass(frozen=True)
class SuiteRun:
    returncode: int
    output: str
    workdir: Path

    @property
    def reports(self) -> Path:
        return self.workdir / "reports"

    def lines(self, prefix: str) -> list[str]:
        """Every line starting with ``quantbench: <prefix>``, in order."""
        return [line for line in self.output.splitlines() if line.startswith(f"quantbench: {prefix}")]

    def line(self, prefix: str) -> str:
        """The session's summary line starting with ``quantbench: <prefix>`` (its last one: a build phase
        started by --qb-build-workers prints its own summary first)."""
        found = self.lines(prefix)
        if not found:
            raise AssertionError(f"no 'quantbench: {prefix}' line in:\n{self.output}")
        return found[-1]

    def outcomes(self) -> dict[str, str]:
        """Test id -> passed/failed/error/skipped, from the run's JUnit XML."""
        result = {}
        for case in ET.parse(self.workdir / "junit.xml").getroot().iter("testcase"):
            kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
            result[case.get("name")] = kinds[-1] if kinds else "passed"  # teardown errors come last
        return result

    def message(self, test_id: str) -> str:
        for case in ET.parse(self.workdir / "junit.xml").getroot().iter("testcase"):
            if case.get("name") == test_id:
                return " ".join(child.get("message", "") for child in case)
        raise KeyError(test_id)

    def selection(self) -> dict[str, tuple[float | None, bool]]:
        data = json.loads((self.reports / "selection.json").read_text())
        (selection,) = data["selections"]
        return {o["variant"]: (o["map50_95"], o["passed"]) for o in selection["outcomes"]} | {
            "winner": selection["winner"]}


def run_suite(workdir: Path, cache: Path, assets: Path, *args: str, table: str = VARIANTS) -> SuiteRun:
    workdir.mkdir(parents=True, exist_ok=True)
    variants = workdir / "variants.toml"
    variants.write_text(table)
    cmd = [
        sys.executable, "-m", "pytest", str(BENCH), "-p", "no:cacheprovider", f"--junitxml={workdir / 'junit.xml'}",
        "--qb-model", str(assets / "models" / "yolov5n-coco.onnx"), "--qb-variants-file", str(variants),
        "--qb-backend", "onnxruntime", "--qb-eval-images", "8", "--qb-calib-images", "8",
        "--qb-rounds", "3", "--qb-warmup", "1", "--qb-min-time", "0", "--qb-cache-dir", str(cache), "--qb-report-dir", str(workdir / "reports"),
        *args,
    ]
    env = {**os.environ, "QUANTBENCH_ASSETS": str(assets)}
    done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    return SuiteRun(done.returncode, done.stdout + done.stderr, workdir)


@pytest.fixture(scope="module")
def serial_runs(tmp_path_factory: pytest.TempPathFactory, assets_dir: Path) -> tuple[SuiteRun, SuiteRun]:
    """A first serial run on an empty cache (with the failing variant), then a second one, compared."""
    root = tmp_path_factory.mktemp("serial")
    first = run_suite(root / "first", root / "cache", assets_dir,
                      "--benchmark-json", str(root / "first" / "out" / "benchmark.json"),
                      "--benchmark-storage", str(root / "storage"), "--benchmark-autosave")
    second = run_suite(root / "second", root / "cache", assets_dir, "--qb-variants", BUILDABLE,
                       "--benchmark-storage", str(root / "storage"), "--benchmark-compare")
    return first, second


@pytest.fixture(scope="module")
def parallel_runs(tmp_path_factory: pytest.TempPathFactory, assets_dir: Path) -> tuple[SuiteRun, SuiteRun]:
    """`make bench` twice: on an empty cache (a parallel build phase, then timing), then with nothing changed."""
    root = tmp_path_factory.mktemp("parallel")
    first = run_suite(root / "first", root / "cache", assets_dir, "--qb-variants", f"{BUILDABLE},int8-per-node",
                      "--qb-build-workers", "2", "--benchmark-json", str(root / "first" / "benchmark.json"))
    # A failed build is never cached (the next run retries it), so the re-run leaves it out.
    again = run_suite(root / "again", root / "cache", assets_dir, "--qb-variants", BUILDABLE, "--qb-build-workers", "2")
    return first, again


def test_serial_run_prints_the_selection_and_writes_the_report(serial_runs):
    first, _ = serial_runs
    assert "yolov5n-coco on onnxruntime (batch 1, baseline fp16" in first.output
    assert re.search(r"^fastest passing: yolov5n-coco \S+ on onnxruntime", first.output, re.M), first.output
    for name in ("report.md", "selection.json", "pareto.png"):
        assert (first.reports / name).stat().st_size > 0
    selection = first.selection()
    assert selection["fp16"][1] is True and selection["fp32"][1] is True  # fp32 loses nothing against fp16
    assert selection["int8-per-node"] == (None, False)  # its build failed: listed, failing, never the winner
    assert selection["winner"] in ("fp32", "fp16")


def test_benchmark_json_carries_the_quantbench_records(serial_runs):
    first, _ = serial_runs
    data = json.loads((first.workdir / "out" / "benchmark.json").read_text())
    timed = {b["name"]: b for b in data["benchmarks"]}
    assert set(timed) == {f"test_latency[yolov5n-coco-{v}-b1]" for v in (*BUILDABLE.split(","), "int8-extreme-explore")}
    int8 = timed["test_latency[yolov5n-coco-int8-extreme-b1]"]
    info = int8["extra_info"]["quantbench"]
    assert info["latency"]["host"]["rounds"] == 3 == int8["stats"]["rounds"]
    samples = info["latency"]["host"]["samples_ms"]  # the raw rounds pytest-benchmark timed, kept
    assert len(samples) == 3 and sorted(samples)[1] == pytest.approx(int8["stats"]["median"] * 1e3)
    assert info["latency"]["host"]["median_ms"] == pytest.approx(int8["stats"]["median"] * 1e3)
    assert info["latency"]["batch_size"] == 1 and info["latency"]["backend"] == "onnxruntime"
    assert info["eval"]["num_images"] == 8 and info["eval"]["variant"] == "int8-extreme"
    assert info["variant_options"]["calibration_method"] == "max"
    assert info["variant_options"]["calib_images"] == 8  # --qb-calib-images caps the table's value
    assert info["build"]["quantized_nodes"] > 0
    assert info["accuracy"]["baseline"] == "fp16"
    assert info["accuracy"]["drop_abs"] == pytest.approx(
        info["accuracy"]["baseline_map50_95"] - info["eval"]["metrics"]["map50_95"])

    # `quantbench select` reads the same file back into the same selection.
    from quantbench.outputs.benchmark_json import records_from_benchmark_json

    evals, latencies, options = records_from_benchmark_json([first.workdir / "out" / "benchmark.json"])
    assert {e.variant for e in evals} == {lat.variant for lat in latencies} == {*BUILDABLE.split(","), "int8-extreme-explore"}
    assert options["yolov5n-coco", "int8-extreme"] == info["variant_options"]


def test_a_failing_variant_fails_only_its_own_tests(serial_runs):
    first, _ = serial_runs
    outcomes = first.outcomes()
    broken = {"test_accuracy[yolov5n-coco-int8-per-node]", "test_latency[yolov5n-coco-int8-per-node-b1]"}
    assert {name for name, kind in outcomes.items() if kind == "error"} == broken
    for name in broken:
        assert "QuantizeError: ModelOpt failed to build variant 'int8-per-node' of model yolov5n-coco" in first.message(name)
    assert outcomes["test_accuracy[yolov5n-coco-fp16]"] == outcomes["test_accuracy[yolov5n-coco-fp32]"] == "passed"
    assert all(outcomes[f"test_latency[yolov5n-coco-{v}-b1]"] == "passed" for v in (*BUILDABLE.split(","), "int8-extreme-explore"))
    assert first.line("variants built").endswith("failed builds: 1 (yolov5n-coco/int8-per-node)")


def test_an_accuracy_failure_names_the_measured_drop_and_the_threshold(serial_runs):
    first, _ = serial_runs
    (map_int8, passed), map_fp16 = first.selection()["int8-extreme"], first.selection()["fp16"][0]
    name = "test_accuracy[yolov5n-coco-int8-extreme]"
    assert first.outcomes()[name] == "failure" and not passed and map_fp16 - map_int8 > 0.010
    message = first.message(name)
    # Interval verdicts (the default): the drop, its paired-bootstrap interval, the budget it is beyond.
    assert f"mAP50-95 drop {(map_fp16 - map_int8) * 100:.2f} points (95% interval " in message
    assert "is beyond the 0.71-point budget (max_abs_drop 1.00 points, max_rel_drop 3.0% of baseline fp16 " \
           f"{map_fp16:.4f})" in message


def test_a_not_gated_variant_missing_the_budget_is_an_expected_failure(serial_runs):
    first, _ = serial_runs
    name = "test_accuracy[yolov5n-coco-int8-extreme-explore]"
    assert first.outcomes()[name] == "skipped"  # JUnit's word for xfail
    assert first.message(name).startswith("not gated: mAP50-95 drop")
    assert first.selection()["int8-extreme-explore"] == first.selection()["int8-extreme"]  # same build, same stored mAP
    assert re.search(r"^int8-extreme-explore .* fail \(not gated\)", first.output, re.M), first.output


def test_second_run_builds_nothing_evaluates_nothing_and_compares(serial_runs):
    first, second = serial_runs
    assert first.line("variants built").startswith(
        "quantbench: variants built by ModelOpt: 2 (yolov5n-coco/fp16, yolov5n-coco/int8-extreme)")
    assert second.line("variants built").startswith("quantbench: variants built by ModelOpt: 0 (none)")
    assert second.line("evaluations run") == "quantbench: evaluations run: 0 (none); read from the results store: 3"
    assert "Comparing against benchmarks from" in second.output
    assert re.search(r"test_latency\[yolov5n-coco-fp32-b1\] \(0001_", second.output), second.output
    assert re.search(r"test_latency\[yolov5n-coco-fp32-b1\] \(NOW\)", second.output), second.output
    same = set(BUILDABLE.split(","))  # the same mAPs and verdicts, read back
    assert {k: v for k, v in second.selection().items() if k in same} == {
        k: v for k, v in first.selection().items() if k in same}


@pytest.mark.parametrize(("saved_median_s", "regressed"), [(1e-9, True), (1e3, False)],
                         ids=["saved-run-far-faster", "saved-run-far-slower"])
def test_compare_fail_gates_on_the_median_of_a_saved_run(serial_runs, assets_dir: Path, saved_median_s: float,
                                                         regressed: bool, tmp_path: Path):
    """`--benchmark-compare --benchmark-compare-fail=median:10%` against the first run's autosaved file,
    its medians set out of reach on either side, so the verdict does not depend on this machine's load."""
    first, _ = serial_runs
    (saved,) = (first.workdir.parent / "storage").glob("*/0001_*.json")
    storage = tmp_path / "storage"  # its own folders: the runs' cache is shared, their folders are not
    data = json.loads(saved.read_text())
    for bench in data["benchmarks"]:
        bench["stats"]["median"] = saved_median_s
    (storage / saved.parent.name).mkdir(parents=True)
    (storage / saved.parent.name / saved.name).write_text(json.dumps(data))
    run = run_suite(tmp_path / "compare", first.workdir.parent / "cache", assets_dir,
                    "--qb-variants", "fp32", "-m", "latency", "--benchmark-storage", str(storage),
                    "--benchmark-compare=0001", "--benchmark-compare-fail=median:10%")
    assert "Comparing against benchmarks from" in run.output, run.output
    if regressed:
        assert run.returncode != 0 and "Performance has regressed" in run.output, run.output
        assert "test_latency[yolov5n-coco-fp32-b1] (0001_" in run.output
    else:
        assert run.returncode == 0 and "Performance has regressed" not in run.output, run.output


def test_parallel_phase_builds_and_evaluates_each_artefact_once(parallel_runs):
    first, _ = parallel_runs
    assert first.line("4 variants to build or evaluate") == (
        "quantbench: 4 variants to build or evaluate (yolov5n-coco/fp32, yolov5n-coco/fp16, yolov5n-coco/int8-extreme, "
        "yolov5n-coco/int8-per-node): 2 parallel workers (pytest -n 2 -m accuracy) first, then timing here")
    assert "gw0: CPU shared by 2 workers" in first.output  # the build phase's own header
    # The build phase's summary, then the session's: one run, one ledger, each artefact made once.
    built = first.lines("variants built")
    assert len(built) == 2
    for line in built:
        assert line.startswith("quantbench: variants built by ModelOpt: 2 (yolov5n-coco/fp16, yolov5n-coco/int8-extreme);")
        assert line.endswith("failed builds: 1 (yolov5n-coco/int8-per-node)")
    assert first.lines("evaluations run")[-1].startswith(
        "quantbench: evaluations run: 3 (yolov5n-coco/fp16, yolov5n-coco/fp32, yolov5n-coco/int8-extreme);")
    assert first.lines("latency results")[0] == (
        "quantbench: latency results: none in this run (timed in the serial phase); no selection made here")
    assert first.line("latency results").startswith("quantbench: latency results: 3; wrote ")
    outcomes = first.outcomes()  # the timed session's own verdicts (its JUnit XML)
    assert outcomes["test_latency[yolov5n-coco-fp32-b1]"] == "passed"
    assert outcomes["test_accuracy[yolov5n-coco-int8-extreme]"] == "failure"
    # The build phase's failure is adopted: the timed session fails the variant's tests with the same
    # sentence without running ModelOpt again (ModelOpt's own exception is chained only where it ran).
    assert outcomes["test_accuracy[yolov5n-coco-int8-per-node]"] == "error"
    assert "check the variant's options" in first.message("test_accuracy[yolov5n-coco-int8-per-node]")
    build_phase, timed_session = first.output.split("quantbench: parallel build phase finished", 1)
    modelopt_raised = "\nIncomplete symbolic shape inference\n"
    assert modelopt_raised in build_phase and modelopt_raised not in timed_session


def test_a_rerun_with_nothing_changed_starts_no_build_phase_and_only_times(parallel_runs):
    _, again = parallel_runs
    assert "quantbench: every variant, engine and accuracy is in the caches: nothing to build, timing only" in again.output
    assert "parallel build phase" not in again.output and "gw0: " not in again.output  # no worker header
    assert again.line("variants built").startswith("quantbench: variants built by ModelOpt: 0 (none)")
    assert again.line("evaluations run").startswith("quantbench: evaluations run: 0 (none)")
    assert again.line("latency results").startswith("quantbench: latency results: 3; wrote ")
    # The session says how much of it went into measuring (3 rounds here: a small share, by design).
    share = re.fullmatch(r"quantbench: measurement: ([\d.]+) s of this session's ([\d.]+) s in timing loops "
                         r"\(([\d.]+) %\), ([\d.]+) s in timed rounds \(([\d.]+) %\)", again.line("measurement"))
    assert share, again.line("measurement")
    loops, elapsed, loops_pct, rounds, rounds_pct = map(float, share.groups())
    # The seconds are printed to 0.1 s: the share computed back from them agrees up to that rounding.
    assert 0 < rounds <= loops < elapsed and loops_pct == pytest.approx(100 * loops / elapsed, abs=10 / elapsed + 0.1)


def test_the_parallel_flow_selects_as_the_serial_run_does(parallel_runs, serial_runs):
    first, again = parallel_runs
    serial, _ = serial_runs
    # Same mAPs (computed by the workers) and the same verdicts. The winner is left out: fp32 and
    # fp16 run within a few % of each other on ONNX Runtime's CPU provider, so which of the two
    # passing variants is faster is down to the load on the machine at that moment.
    same = set(BUILDABLE.split(","))
    for run in (first, again):
        assert {k: v for k, v in run.selection().items() if k in same} == {
            k: v for k, v in serial.selection().items() if k in same}
        assert run.selection()["winner"] in ("fp32", "fp16")


def test_latency_only_run_times_with_the_runner_and_gates_the_speed_up(parallel_runs, assets_dir: Path, tmp_path: Path):
    first, _ = parallel_runs
    workdir = tmp_path / "latency-only"  # its own folder: the runs' cache is shared, their folders are not
    workdir.mkdir()
    thresholds = workdir / "thresholds.toml"
    thresholds.write_text('baseline = "fp16"\n[min_speedup]\nonnxruntime = 100.0\n')  # out of reach on purpose
    # --benchmark-disable: pytest-benchmark runs its target once, Runner.time does the timing.
    run = run_suite(workdir, first.workdir.parent / "cache", assets_dir, "--qb-variants", "fp32",
                    "--qb-thresholds", str(thresholds), "-m", "latency", "--benchmark-disable")
    assert run.outcomes() == {"test_latency[yolov5n-coco-fp16-b1]": "passed",
                              "test_latency[yolov5n-coco-fp32-b1]": "failure"}
    assert "< 100.00x required on onnxruntime" in run.message("test_latency[yolov5n-coco-fp32-b1]")
    assert run.line("latency results").startswith("quantbench: latency results: 2;")
    assert run.line("evaluations run") == "quantbench: evaluations run: 0 (none); read from the results store: 2"
    selection = run.selection()  # accuracy from the store, latency from this run
    assert selection["fp16"][1] is True and selection["fp32"][0] is not None and selection["fp32"][1] is False


def test_yolo11_yaml_models_record_accuracy_but_skip_the_gate(tmp_path: Path, assets_dir: Path):
    pytest.importorskip("ultralytics", reason="ultralytics builds YOLO11 graphs from YAMLs")
    thresholds = tmp_path / "thresholds.toml"
    thresholds.write_text('baseline = "fp32"\n')  # fp32 only: the YOLO11 plumbing without ModelOpt's cost
    run = run_suite(tmp_path, tmp_path / "cache", assets_dir, "--qb-model", "yolo11n.yaml", "--qb-model", "yolo11s.yaml",
                    "--qb-thresholds", str(thresholds), "--qb-variants", "fp32", "--qb-eval-images", "2")
    outcomes = run.outcomes()
    for model in ("yolo11n", "yolo11s"):
        assert outcomes[f"test_accuracy[{model}-fp32]"] == "skipped"
        assert "random weights" in run.message(f"test_accuracy[{model}-fp32]")
        assert outcomes[f"test_latency[{model}-fp32-b1]"] == "passed"
    assert "untrained model (random weights)" in run.output  # the selection says why nothing wins


MODEL_SPECIFIC_TABLE = """
[[variant]]
name = "fp32"
kind = "fp32"

[[variant]]
name = "int8-conv-yolo11n"
kind = "int8"
calib_images = 8
op_types_to_quantize = ["Conv"]
models = ["yolo11n-coco"]
"""


def test_two_models_in_one_run_and_a_variant_meant_for_one_of_them(tmp_path: Path, assets_dir: Path):
    """yolo11n-coco (the default model) and yolov5n-coco in one parallel run; the INT8 variant that names
    yolo11n-coco is built, evaluated and timed for it, and skipped with the reason for yolov5n-coco."""
    thresholds = tmp_path / "thresholds.toml"
    # fp32 baseline (no AutoCast build) and a wide budget: 8 calibration images are for plumbing, not mAP.
    thresholds.write_text('baseline = "fp32"\nmax_abs_drop = 0.5\nmax_rel_drop = 0.9\n')
    run = run_suite(tmp_path, tmp_path / "cache", assets_dir, "--qb-model",
                    str(assets_dir / "models" / "yolo11n-coco.onnx"), "--qb-thresholds", str(thresholds),
                    "--qb-build-workers", "2", table=MODEL_SPECIFIC_TABLE)
    outcomes = run.outcomes()
    for model in ("yolov5n-coco", "yolo11n-coco"):
        assert outcomes[f"test_accuracy[{model}-fp32]"] == "passed", run.output
        assert outcomes[f"test_latency[{model}-fp32-b1]"] == "passed", run.output
    assert outcomes["test_accuracy[yolo11n-coco-int8-conv-yolo11n]"] == "passed", run.output
    assert outcomes["test_latency[yolo11n-coco-int8-conv-yolo11n-b1]"] == "passed", run.output
    for test_id in ("test_accuracy[yolov5n-coco-int8-conv-yolo11n]", "test_latency[yolov5n-coco-int8-conv-yolo11n-b1]"):
        assert outcomes[test_id] == "skipped"
        assert ("variant 'int8-conv-yolo11n' is meant for model yolo11n-coco only (its 'models' key in the variant "
                "table); yolov5n-coco skips it") in run.message(test_id)
    # The parallel build phase was asked for exactly the pairs that apply (in pytest's grouping order).
    planned = re.match(r"quantbench: 3 variants to build or evaluate \(([^)]*)\)", run.line("3 variants to build"))
    assert planned, run.output
    assert set(planned.group(1).split(", ")) == {"yolov5n-coco/fp32", "yolo11n-coco/fp32", "yolo11n-coco/int8-conv-yolo11n"}
    assert run.line("variants built by ModelOpt").startswith(
        "quantbench: variants built by ModelOpt: 1 (yolo11n-coco/int8-conv-yolo11n)")
    selections = json.loads((run.reports / "selection.json").read_text())["selections"]
    by_model = {sel["model"]: {o["variant"] for o in sel["outcomes"]} for sel in selections}
    assert by_model == {"yolov5n-coco": {"fp32"}, "yolo11n-coco": {"fp32", "int8-conv-yolo11n"}}
    assert run.returncode == 0, run.output


def test_collection_names_tests_by_model_variant_and_batch_and_says_why_not_tensorrt(pytester: pytest.Pytester,
                                                                                 assets_dir: Path):
    from quantbench.backends import BackendKind, resolve_backend

    backend, reason = resolve_backend("auto")
    if backend.kind is BackendKind.TENSORRT:
        pytest.skip("TensorRT runs here: auto does not fall back")
    result = pytester.runpytest_subprocess(str(BENCH), "-p", "no:cacheprovider", "--collect-only", "--qb-backend", "auto",
                                           "--qb-batch-sizes", "1,8", "--qb-cache-dir", str(pytester.path / "cache"))
    assert result.ret == pytest.ExitCode.OK
    out = result.stdout.str()
    assert out.count(f"TensorRT not found ({reason}): using ONNX Runtime") == 1
    # The default model with QUANTBENCH_ASSETS set: the COCO-trained yolo11n-coco.
    for test_id in ("test_accuracy[yolo11n-coco-int8-entropy]", "test_latency[yolo11n-coco-int8-entropy-b1]",
                    "test_latency[yolo11n-coco-fp16-b8]", "test_accuracy[yolo11n-coco-int8-auto-yolo11n]"):
        assert test_id in out
    assert "yolov5n-coco" not in out
    assert not (pytester.path / "cache").exists()  # collecting builds nothing


@pytest.mark.parametrize(
    ("thresholds", "named"),
    [
        ('baseline = "fp16"\nmax_abs_drp = 0.01\n', "'max_abs_drp'"),
        ("max_abs_drop = -0.01\n", "max_abs_drop = -0.01"),
        ('baseline = "fp8"\n', "baseline = 'fp8'"),
    ],
    ids=["unknown-key", "negative-drop", "missing-baseline"],
)
def test_tampered_thresholds_stop_the_session_before_any_build(pytester: pytest.Pytester, assets_dir: Path,
                                                               thresholds: str, named: str):
    path = pytester.path / "thresholds.toml"
    path.write_text(thresholds)
    cache = pytester.path / "cache"
    result = pytester.runpytest_subprocess(str(BENCH), "-p", "no:cacheprovider", "--qb-thresholds", str(path),
                                           "--qb-cache-dir", str(cache))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.errlines if line.startswith("ERROR: ")]
    assert len(errors) == 1 and str(path) in errors[0] and named in errors[0], result.errlines
    assert not cache.exists()  # nothing was built, calibrated or evaluated
    assert "collected" not in result.stdout.str()


def _start_up_refusal(pytester: pytest.Pytester, *args: str) -> tuple[list[str], Path]:
    cache = pytester.path / "cache"
    result = pytester.runpytest_subprocess(str(BENCH), "-p", "no:cacheprovider", "--qb-cache-dir", str(cache), *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    assert "collected" not in result.stdout.str()
    return [line for line in result.errlines if line.startswith("ERROR: ")], cache


def test_a_baseline_the_variant_table_keeps_off_the_model_stops_the_session(pytester: pytest.Pytester, assets_dir: Path):
    # The baseline would be skipped on yolov5n-coco, and the run would name it the winner of nothing.
    table = pytester.path / "variants.toml"
    table.write_text('[[variant]]\nname = "fp16"\nkind = "fp16"\nmodels = ["yolo11*"]\n\n'
                     '[[variant]]\nname = "fp32"\nkind = "fp32"\n')
    errors, cache = _start_up_refusal(pytester, "--qb-variants-file", str(table),
                                      "--qb-model", str(assets_dir / "models" / "yolov5n-coco.onnx"))
    assert len(errors) == 1 and "the baseline of yolov5n-coco" in errors[0] and "restricts 'fp16' to yolo11*" in errors[0]
    assert not (cache / "variants").exists()  # nothing was built


def test_too_few_calibration_images_stop_the_session_before_any_build(pytester: pytest.Pytester, assets_dir: Path):
    calib = pytester.path / "calib"
    (calib / "images").mkdir(parents=True)
    for image in sorted((assets_dir / "coco" / "calib500" / "images").glob("*.jpg"))[:3]:
        (calib / "images" / image.name).write_bytes(image.read_bytes())
    errors, cache = _start_up_refusal(pytester, "--qb-calib-data", str(calib), "--qb-variants", "int8-max",
                                      "--qb-calib-images", "8")
    assert len(errors) == 1 and str(calib) in errors[0], errors
    assert not (cache / "variants").exists() and not (cache / "calibration").exists()


@pytest.mark.parametrize(
    ("option", "why"),
    [
        (["--qb-batch-sizes", "1,0"], "'0' must be at least 1"),
        (["--qb-batch-sizes", "8,8"], "repeats a batch size"),
        (["--qb-backend", "tensorrt-llm"], "is not one of auto, onnxruntime, tensorrt"),
        (["--qb-model", "missing/yolo11n.onnx"], "does not exist"),
        (["--qb-model", "model.tflite"], "is not a .onnx, .pt or .yaml model"),
        (["--qb-eval-images", "many"], "is not a whole number"),
        (["--qb-variants", "int9-*"], "--qb-variants: 'int9-*' matches no variant"),
        (["--qb-min-time", "-1"], "'-1' is not a number of seconds >= 0"),
        (["--qb-build-workers", "0"], "'0' must be at least 1"),
    ],
    ids=["batch-zero", "batch-repeated", "backend", "model-missing", "model-suffix", "eval-images", "variants",
         "min-time", "build-workers"],
)
def test_bad_option_values_are_refused_at_start_up(pytester: pytest.Pytester, assets_dir: Path, option, why):
    result = pytester.runpytest_subprocess(str(BENCH), "-p", "no:cacheprovider", *option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert why in "\n".join(result.errlines), result.errlines
