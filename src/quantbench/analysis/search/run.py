"""`run_search`, what `quantbench search` calls: the budget's source, the sensitivity analysis, the
search, the verifying ModelOpt builds through the analysis' pipeline, and the files written."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

from quantbench.analysis.meter import GraphMeter
from quantbench.analysis.search.algorithm import SearchHooks, SplitTarget, search_split
from quantbench.analysis.search.config import DEFAULT_CONFIDENCE, FlopCost, SearchConfig, check_budget, search_order
from quantbench.analysis.search.report import SearchResult, write_search
from quantbench.analysis.search.state import STATE_FILE
from quantbench.analysis.sensitivity import SensitivityReport, layer_sensitivity, write_sensitivity
from quantbench.analysis.setup import DEFAULT_OPTIONS, AnalysisInputs, AnalysisOptions, AnalysisSetup, open_meter
from quantbench.build.qdq_graph import QdqModel
from quantbench.build.quantize import exact_name_pattern
from quantbench.build.variants import Variant, variant_toml
from quantbench.decision.thresholds import Thresholds
from quantbench.errors import ConfigError
from quantbench.records import VariantBuild

_DEFAULT_CONFIG = SearchConfig()


def run_search(inputs: AnalysisInputs, out_dir: Path, *, budget: float | Path | None = None,
               options: AnalysisOptions = DEFAULT_OPTIONS, config: SearchConfig = _DEFAULT_CONFIG,
               progress: bool = True) -> SearchResult:
    """Find the cheapest FP16/INT8 split of ``inputs.model`` whose probe mAP50-95 drop vs FP32 is within budget.

    ``budget`` is a number (a fraction: 0.003 = 0.3 mAP points) or a thresholds.toml (read before any
    work) whose ``max_abs_drop`` for the model is the budget and whose ``confidence`` then also sets
    the level of the drop intervals unless ``config.confidence`` does. ``options`` says how the INT8
    build is analysed (``options.groups`` restricts the analysis and the search to those layer
    groups), ``config`` how the split is searched (``max_verify=0`` skips the real build).
    Runs (or reuses from the cache) the sensitivity analysis, searches, builds the found variant
    with ModelOpt and scores it on the probe (its verdict: the paired-bootstrap interval of its drop
    from FP32 against the budget, by the bench gate's rule), and writes into ``out_dir``:
    sensitivity.{md,csv,png}, search.md, search_curve.png, ``<variant_name>.toml`` and the
    resumable search_state.json.

    The trials are scored on graphs derived from the analysis graph (FP32 outside INT8, see
    `setup.prepare_analysis`); the verifying build is the emitted variant itself, with
    ``options.high_precision_dtype`` outside INT8 (FP16 by default, what TensorRT deploys), so the
    verdict is about the split as deployed. ONNX Runtime scores it with its float16
    QuantizeLinear nodes computed in fp32, as TensorRT does (`OrtBackend.open_onnx`).
    """
    budget_for = budget_source(budget)  # checked (and thresholds.toml read) before any work
    setup = inputs.prepare(options)
    model_budget, confidence = budget_for(setup.model.name)
    if config.confidence is None:
        config = dataclasses.replace(config, confidence=confidence)
    out_dir = Path(out_dir)
    qdq, meter = open_meter(setup)
    with meter:
        report = layer_sensitivity(meter, model=setup.model.name, top_k=options.top_k, groups=options.groups,
                                   fp32_onnx=Path(setup.model.path), progress=progress)
        write_sensitivity(report, out_dir)
        builder = _SplitBuilder(setup, qdq, meter, model_budget)
        result = _search(builder, report, config, SearchHooks(state_path=out_dir / STATE_FILE, progress=progress))
        return write_search(result, qdq, out_dir)


def budget_source(budget: float | Path | None) -> Callable[[str], tuple[float, float]]:
    """Model name -> its budget and the level of its intervals: a number ``budget`` itself at
    DEFAULT_CONFIDENCE, else ``max_abs_drop`` and ``confidence`` of the model in the thresholds.toml
    ``budget`` names (read now)."""
    if budget is None:
        raise ConfigError("no search budget given; pass budget= (e.g. 0.003) or a thresholds.toml.")
    if not isinstance(budget, Path):
        given = check_budget(budget)
        return lambda model: (given, DEFAULT_CONFIDENCE)
    limits = Thresholds.load(budget)
    return lambda model: (limits.for_model(model).max_abs_drop, limits.for_model(model).confidence)


def excluded_patterns(excluded: Sequence[str]) -> tuple[str, ...]:
    """ModelOpt ``nodes_to_exclude`` patterns that match exactly these node names."""
    return tuple(exact_name_pattern(n) for n in excluded)


class _SplitBuilder:
    """Real ModelOpt builds of found splits through the analysis' pipeline, scored on the probe."""

    def __init__(self, setup: AnalysisSetup, qdq: QdqModel, meter: GraphMeter, budget: float):
        self.setup, self.qdq, self.meter, self.budget = setup, qdq, meter, budget
        self.builds: dict[tuple[str, ...], VariantBuild] = {}

    def variant(self, excluded: Sequence[str]) -> Variant:
        """The emitted variant: the template with ``excluded`` kept out of INT8."""
        share = self.qdq.int8_flop_share(excluded)
        probe = self.meter.probe.description if self.meter.probe else "no probe"
        return dataclasses.replace(
            self.setup.template, nodes_to_exclude=excluded_patterns(excluded),
            description=(f"Found by quantbench search: {len(excluded)} of {len(self.qdq.groups)} layer groups out "
                         f"of INT8, {100 * share:.1f} % of linear-op FLOPs INT8; probe drop budget {self.budget:.4f} "
                         f"({probe})."),
        )

    def build(self, excluded: tuple[str, ...]) -> Path:
        """The real build of the split (the search's probe scores it)."""
        build = self.setup.pipeline.build(self.setup.model, self.variant(excluded))
        self.builds[excluded] = build
        return Path(build.onnx_path)


def _search(builder: _SplitBuilder, report: SensitivityReport, config: SearchConfig,
            hooks: SearchHooks) -> SearchResult:
    """Search the split from the sensitivity ranking, verify it with a real build, describe the result."""
    setup, qdq, meter = builder.setup, builder.qdq, builder.meter
    cost = FlopCost.for_model(qdq)
    verify = config.max_verify > 0
    target = SplitTarget(meter.probe_score_of_file(Path(setup.model.path)), builder.budget,
                         reference_onnx=Path(setup.model.path))
    hooks = dataclasses.replace(hooks, cost=cost, verify=builder.build if verify else None)
    outcome = search_split(meter, search_order(report, qdq, cost), target, config, hooks)
    if verify and outcome.excluded not in builder.builds and outcome.verified_score is not None:
        builder.build(outcome.excluded)  # a resumed search: the build comes from the cache
    return SearchResult(
        model=setup.model.name, variant_name=setup.options.variant_name, outcome=outcome,
        variant_toml=variant_toml(builder.variant(outcome.excluded)),
        probe=meter.probe.description if meter.probe else "",
        cost_model=f"{cost.name} (FP16 layers weighted by FLOPs: 1 + FLOPs / mean linear-layer FLOPs)",
        build=builder.builds.get(outcome.excluded),
    )
