"""The accuracy-budgeted split search, on a tiny YOLO-layout detector built here with onnx.helper.

The tiny model goes through the real pipeline (export validation, calibration on calib500
images, ModelOpt INT8); its probe is label-free (`OutputErrorProbe`: error power of the class
rows against the FP32 model), so the budget is synthetic but every number is measured.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantbench.analysis.meter import GraphMeter, OutputErrorProbe, error_power, output_agreement, run_batches
from quantbench.analysis.search import (
    STATE_FILE,
    FlopCost,
    SearchConfig,
    SearchHooks,
    SearchStateError,
    SplitTarget,
    Strategy,
    check_budget,
    excluded_patterns,
    run_search,
    search_order,
    search_split,
    within_floor,
)
from quantbench.analysis.sensitivity import layer_sensitivity
from quantbench.analysis.setup import AnalysisInputs
from quantbench.backends import BackendKind, BuildOptions, Engine
from quantbench.backends.ort import OrtBackend, fp16_quantize_nodes
from quantbench.build.export import resolve_model
from quantbench.build.qdq_graph import QdqModel
from quantbench.build.quantize import matching_nodes, quantize_variant
from quantbench.build.variants import Variant, VariantKind, load_variants, variant_toml
from quantbench.cache import ArtifactCache
from quantbench.data.calibration import build_calibration
from quantbench.errors import ConfigError

SIZE = 64


def tiny_detector(path: Path, seed: int = 0) -> Path:
    """[N, 3, 64, 64] -> [N, 6, 64]: 4 box rows + 2 class rows over 8x8 anchors; convs, residual Adds."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def conv(name: str, x: str, cin: int, cout: int, k: int, stride: int, act: bool = True) -> str:
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
        b = (rng.standard_normal(cout) * 0.1).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"{name}.weight"), numpy_helper.from_array(b, f"{name}.bias")])
        nodes.append(helper.make_node("Conv", [x, f"{name}.weight", f"{name}.bias"], [f"{name}_out"],
                                      name=f"/{name}/Conv", kernel_shape=[k, k], strides=[stride, stride],
                                      pads=[k // 2] * 4))
        if not act:
            return f"{name}_out"
        nodes.append(helper.make_node("Relu", [f"{name}_out"], [f"{name}_act"], name=f"/{name}/Relu"))
        return f"{name}_act"

    x0 = conv("stem", "images", 3, 16, 3, 2)
    x1 = conv("b1", x0, 16, 16, 3, 1)
    nodes.append(helper.make_node("Add", [x0, x1], ["res1"], name="/b1/Add"))
    x2 = conv("down", "res1", 16, 32, 3, 2)
    x3 = conv("b2", x2, 32, 32, 3, 1)
    nodes.append(helper.make_node("Add", [x2, x3], ["res2"], name="/b2/Add"))
    x4 = conv("down2", "res2", 32, 32, 3, 2)
    x5 = conv("head", x4, 32, 6, 1, 1, act=False)
    inits.append(numpy_helper.from_array(np.array([0, 6, 64], np.int64), "shape"))
    nodes.append(helper.make_node("Reshape", [x5, "shape"], ["output0"], name="/head/Reshape"))
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 6, 64])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@dataclasses.dataclass(frozen=True)
class Tiny:
    model: object  # ModelInfo
    calib: object  # CalibrationSet
    variant: Variant
    qdq: QdqModel
    images: np.ndarray  # probe images: calibration images other than the proxies


@pytest.fixture(scope="module")
def tiny(calib500: Path, tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    folder = tmp_path_factory.mktemp("tiny")
    cache = ArtifactCache(folder / "cache")
    model = resolve_model(tiny_detector(folder / "tiny.onnx"), cache, imgsz=SIZE)
    calib = build_calibration(calib500, 16, cache=cache, size=SIZE)
    variant = Variant("int8-tiny", VariantKind.INT8, calibration_method="max", calib_images=16,
                      high_precision_dtype="fp32")
    build = quantize_variant(model, variant, calib, cache)
    data = calib.load()
    return Tiny(model, calib, variant, QdqModel.load(build.onnx_path, input_size=SIZE), data[8:])


def _meter(tiny: Tiny, cache: ArtifactCache, probe=None) -> GraphMeter:
    probe = probe or OutputErrorProbe(tiny.images, tiny.model.path)
    return GraphMeter(tiny.qdq, cache, proxy_images=tiny.calib.load()[:8], reference_onnx=tiny.model.path,
                      probe=probe)


@pytest.fixture(scope="module")
def order_and_full_drop(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory) -> tuple[tuple[str, ...], float]:
    cache = ArtifactCache(tmp_path_factory.mktemp("order-cache"))
    with _meter(tiny, cache) as meter:
        report = layer_sensitivity(meter, model="tiny", top_k=3, fp32_onnx=tiny.model.path, progress=False)
        full_drop = -meter.probe_score(tiny.qdq.group_names)
    return search_order(report, tiny.qdq, FlopCost.for_model(tiny.qdq)), full_drop


class CountingProbe(OutputErrorProbe):
    """The real probe, counting its evaluations; ``kill_after`` simulates a killed process."""

    class Killed(Exception):
        pass

    def __init__(self, *args, kill_after: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls, self.kill_after = 0, kill_after

    def score(self, onnx_path: Path) -> float:
        if self.kill_after is not None and self.calls >= self.kill_after:
            raise CountingProbe.Killed()
        self.calls += 1
        return super().score(onnx_path)


def test_tiny_model_has_several_quantized_groups(tiny: Tiny) -> None:
    ops = [g.op_type for g in tiny.qdq.groups]
    assert ops.count("Conv") >= 4 and "Add" in ops


@pytest.mark.parametrize("strategy", list(Strategy))
def test_search_meets_the_budget_with_a_minimal_split(tiny: Tiny, order_and_full_drop, strategy: Strategy,
                                                      tmp_path: Path) -> None:
    order, full_drop = order_and_full_drop
    assert full_drop > 0  # full INT8 is measurably off the FP32 output
    budget = 0.25 * full_drop  # forces some groups out of INT8, not all
    config = SearchConfig(strategy=strategy, max_steps=30, min_int8_flop_share=0.0)  # no floor: the budget decides
    with _meter(tiny, ArtifactCache(tmp_path / "cache")) as meter:
        reference = meter.probe_score_of_file(tiny.model.path)
        outcome = search_split(meter, order, SplitTarget(reference, budget), config,
                               SearchHooks(progress=False))
        assert reference == pytest.approx(0.0, abs=1e-12)  # FP32 against itself
        assert outcome.met_budget and 0 < len(outcome.excluded) < len(tiny.qdq.groups)
        # Re-measured from scratch, not read from the trace: the split really is within budget.
        final = tmp_path / "final.onnx"
        onnx.save(tiny.qdq.with_excluded(outcome.excluded), str(final))
        assert reference - meter.probe.score(final) <= budget + 1e-12
    forward = [s for s in outcome.steps if s.action in ("add", "prefix")]
    passing = [len(s.excluded) for s in forward if s.within_budget]
    # The forward phase stopped at the shortest passing prefix it saw: one group fewer failed.
    shortest = min(passing)
    assert any(len(s.excluded) == shortest - 1 and not s.within_budget for s in (outcome.steps[0], *forward))
    if strategy is Strategy.GREEDY:
        assert [len(s.excluded) for s in forward] == list(range(1, shortest + 1))
    # Then it stopped trimming: every linear group still out of INT8 was tried back in and broke the budget.
    trims = {s.group: s for s in outcome.steps if s.action == "trim"}
    for name in outcome.excluded:
        group = tiny.qdq.group(name)
        if group.is_linear and group.flops >= config.trim_min_flop_share * tiny.qdq.linear_flops_total:
            assert name in trims and not trims[name].within_budget
        else:
            assert name not in trims  # too small to be worth a probe run
    assert outcome.int8_flop_share == pytest.approx(tiny.qdq.int8_flop_share(outcome.excluded))
    assert len(outcome.steps) <= config.max_steps


def test_search_keeps_the_int8_flop_floor(tiny: Tiny, order_and_full_drop, tmp_path: Path) -> None:
    order, _ = order_and_full_drop
    floor = 0.6
    with _meter(tiny, ArtifactCache(tmp_path / "cache")) as meter:
        outcome = search_split(meter, order, SplitTarget(0.0, 0.0),
                               SearchConfig(min_int8_flop_share=floor, trim=False), SearchHooks(progress=False))
    # An exact budget is out of reach: the search ends on the longest allowed prefix, and says so.
    assert not outcome.met_budget
    assert outcome.int8_flop_share >= floor
    assert list(outcome.excluded) == sorted(within_floor(tiny.qdq, order, floor), key=tiny.qdq.group_names.index)
    left = [n for n in order if n not in outcome.excluded]
    assert all(tiny.qdq.int8_flop_share([*outcome.excluded, n]) < floor for n in left)


def test_search_stops_at_max_steps_when_the_budget_is_out_of_reach(tiny: Tiny, order_and_full_drop,
                                                                  tmp_path: Path) -> None:
    order, _ = order_and_full_drop
    with _meter(tiny, ArtifactCache(tmp_path / "cache")) as meter:
        outcome = search_split(meter, order, SplitTarget(0.0, 0.0),
                               SearchConfig(strategy=Strategy.GREEDY, max_steps=3, min_int8_flop_share=0.0),
                               SearchHooks(progress=False))
    assert len(outcome.steps) == 3 and not outcome.met_budget
    assert [s.action for s in outcome.steps] == ["start", "add", "add"]


def test_resumed_search_matches_an_uninterrupted_one(tiny: Tiny, order_and_full_drop, tmp_path: Path) -> None:
    order, full_drop = order_and_full_drop
    config = SearchConfig(max_steps=30, min_int8_flop_share=0.0)

    def run(cache_dir: str, state: Path, probe: CountingProbe):
        # Each run gets an empty artefact cache: only the state file can carry the earlier trials.
        with _meter(tiny, ArtifactCache(tmp_path / cache_dir), probe) as meter:
            return search_split(meter, order, SplitTarget(0.0, 0.25 * full_drop), config,
                                SearchHooks(state_path=state, progress=False))

    straight_probe = CountingProbe(tiny.images, tiny.model.path)
    straight = run("c1", tmp_path / "a" / STATE_FILE, straight_probe)
    # One evaluation per distinct split: a trial that revisits a split is answered by the cache.
    assert straight_probe.calls == len({s.excluded for s in straight.steps}) > 4

    state = tmp_path / "b" / STATE_FILE
    with pytest.raises(CountingProbe.Killed):
        run("c2", state, CountingProbe(tiny.images, tiny.model.path, kill_after=3))
    assert len(json.loads(state.read_text())["steps"]) == 3  # saved after every trial

    resumed_probe = CountingProbe(tiny.images, tiny.model.path)
    resumed = run("c3", state, resumed_probe)
    assert resumed == straight
    # The three recorded trials were not re-run (and the empty cache could not have answered them).
    assert resumed_probe.calls == len({s.excluded for s in straight.steps[3:]})

    # A state file whose trials do not match this search is refused, not half-used.
    saved = json.loads(state.read_text())
    saved["steps"][1]["group"] = saved["steps"][2]["group"]
    state.write_text(json.dumps(saved))
    with pytest.raises(SearchStateError, match=STATE_FILE):
        run("c4", state, CountingProbe(tiny.images, tiny.model.path))


def test_search_verifies_with_a_real_modelopt_build(tiny: Tiny, order_and_full_drop, tmp_path: Path) -> None:
    order, full_drop = order_and_full_drop
    cache = ArtifactCache(tmp_path / "cache")
    builds = []
    with _meter(tiny, cache) as meter:
        def verify(excluded: tuple[str, ...]) -> Path:
            variant = dataclasses.replace(tiny.variant, nodes_to_exclude=excluded_patterns(excluded))
            build = quantize_variant(tiny.model, variant, tiny.calib, cache)
            builds.append(build)
            return Path(build.onnx_path)

        outcome = search_split(meter, order, SplitTarget(0.0, 0.25 * full_drop),
                               SearchConfig(min_int8_flop_share=0.0), SearchHooks(verify=verify, progress=False))
    checks = [s for s in outcome.steps if s.action == "verify"]
    assert checks and len(checks) == len(builds)
    assert outcome.verified_score == checks[-1].score == meter.probe_score_of_file(Path(builds[-1].onnx_path))
    # A label-free probe keeps no match tables: point drops, and the point's pass or fail.
    assert outcome.drop_interval is None and checks[-1].drop_interval is None
    assert outcome.verdict == ("pass" if checks[-1].within_budget else "fail")
    assert outcome.met_budget == checks[-1].within_budget
    # ModelOpt kept exactly the found groups out of INT8.
    assert set(builds[-1].excluded_nodes) == set(checks[-1].excluded)


def test_an_fp16_rest_build_is_scored_as_the_bench_runs_it(tiny: Tiny, tmp_path: Path) -> None:
    """What `run_search` verifies (the split in FP16 outside INT8) goes through the sensitivity path:
    float16 QuantizeLinears repaired in memory, the very outputs of the bench's cached repaired copy.

    Measured here: relative class-score error power 8.7e-4 (FP16 rest, repaired) against 8.9e-4
    (FP32 rest, what the trials simulate) and 1.2e-2 with onnxruntime's truncating fp16 kernel.
    """
    cache = ArtifactCache(tmp_path / "cache")
    variant = dataclasses.replace(tiny.variant, high_precision_dtype="fp16")
    fp16_rest = Path(quantize_variant(tiny.model, variant, tiny.calib, cache).onnx_path)
    assert fp16_quantize_nodes(onnx.load(str(fp16_rest)))
    backend, options, images = OrtBackend(use_cuda=False), BuildOptions(batch_sizes=(8,)), tiny.images[:8]
    with backend.open(backend.build(fp16_rest, options, cache)) as runner:
        np.testing.assert_array_equal(run_batches(fp16_rest, images, 8)[0], runner.infer(images))
    probe = OutputErrorProbe(images, tiny.model.path)
    simulated = probe.score(Path(tiny.qdq.source))
    assert simulated < 0 and probe.score(fp16_rest) == pytest.approx(simulated, rel=0.2)
    with backend.open(Engine(BackendKind.ONNXRUNTIME, fp16_rest, fp16_rest, options)) as runner:
        unrepaired = runner.infer(images)
    truncated = output_agreement(run_batches(tiny.model.path, images, 8), [unrepaired]).score_sqnr_db
    assert error_power(truncated) > 5 * -simulated  # what the repair is there for


def test_variant_toml_round_trips_through_the_variant_table(tiny: Tiny, tmp_path: Path) -> None:
    excluded = tiny.qdq.group_names[:2]
    variant = dataclasses.replace(tiny.variant, name="int8-auto", nodes_to_exclude=excluded_patterns(excluded),
                                  high_precision_dtype="fp16", description='found "automatically" \\o/')
    path = tmp_path / "variants.toml"
    path.write_text(variant_toml(variant))
    (loaded,) = load_variants(path)
    assert loaded == variant
    base = onnx.load(str(tiny.model.path))
    assert matching_nodes(base, loaded.nodes_to_exclude) == tuple(sorted(excluded))
    assert tomllib.loads(path.read_text())["variant"][0]["name"] == "int8-auto"


def test_search_refuses_bad_configuration(tiny: Tiny, order_and_full_drop, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_steps"):
        SearchConfig(max_steps=0)
    with pytest.raises(ConfigError, match="min_int8_flop_share=85"):
        SearchConfig(min_int8_flop_share=85)
    with pytest.raises(ConfigError, match="trim_min_flop_share"):
        SearchConfig(trim_min_flop_share=-0.1)
    with pytest.raises(ConfigError, match="strategy 'random'"):
        SearchConfig(strategy="random")
    for bad in (-0.01, float("nan"), "0.01"):
        with pytest.raises(ConfigError, match="search budget"):
            check_budget(bad)
    order, _ = order_and_full_drop
    with _meter(tiny, ArtifactCache(tmp_path / "c")) as meter:
        with pytest.raises(ConfigError, match="search budget -0.01"):
            search_split(meter, order, SplitTarget(0.0, -0.01), hooks=SearchHooks(progress=False))
    # run_search checks its budget, and reads thresholds.toml, before any work: the model named
    # here does not exist, and the error is about the budget all the same.
    cache = ArtifactCache(tmp_path / "c")
    with pytest.raises(ConfigError, match="no search budget"):
        run_search(AnalysisInputs("missing.onnx", tmp_path, tmp_path, cache), tmp_path)
    with pytest.raises(ConfigError, match="search budget -1"):
        run_search(AnalysisInputs("missing.onnx", tmp_path, tmp_path, cache), tmp_path, budget=-1)
    with pytest.raises(ConfigError, match="nothing.toml"):
        run_search(AnalysisInputs("missing.onnx", tmp_path, tmp_path, cache), tmp_path, budget=tmp_path / "nothing.toml")
