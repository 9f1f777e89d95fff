"""Accuracy-budgeted FP16/INT8 split: keep as much as possible in INT8 within a probe-score budget.

Starting from the full INT8 graph, `search_split` takes layer groups out of INT8 (into the
variant's high precision) in order of INT8 error removed per cost (`search_order`), and finds
the shortest such prefix whose probe score (mAP50-95 on a split disjoint from the evaluation
data) is within ``budget`` of the reference (FP32) score: by bisection (few probe runs) or one
group at a time (a full accuracy curve). A floor on the INT8 share of FLOPs can cap what leaves
INT8. Then it tries to give each excluded linear group back to INT8, the costliest first, keeping
every return that stays within budget. Each trial is a graph derived from the one calibrated INT8
ONNX (`qdq_graph`), so the search never re-calibrates; the result is confirmed on a real ModelOpt
build with the found ``nodes_to_exclude``, in the precision it is deployed in (``verify``), and
more groups are taken out if that build misses.

Cost of a split: the groups kept out of INT8, each weighted by its FLOPs (`FlopCost`). The cost
model is a protocol so that measured TensorRT per-layer latency can replace FLOPs later.

**Uncertainty.** With a COCO probe (`meter.MatchingProbe`) every trial's drop also gets the
paired-bootstrap interval of the bench gate (`uncertainty.paired_bootstrap` of the trial's and
the FP32 reference's match tables, the same probe images; ``SearchConfig.confidence`` and
``resamples``), and a verdict by the gate's rule (`gate.interval_verdict`): pass when the whole
interval is within the budget, fail when it is all beyond, inconclusive otherwise, with the probe
images that would likely decide it (`uncertainty.images_needed`).

The trials are still accepted or rejected on their *point* drop: it is the best estimate of each
split, it is cheap and deterministic, and bisection needs a yes or no (an inconclusive trial says
neither "more groups out" nor "fewer"). Requiring whole intervals within the budget would instead
push the search to take groups out until the probe's noise, not the INT8 error, fits the budget.
The verdict that matters, on the real verifying build, is the interval's; the point decides only
whether that build takes one more group out (its best estimate misses the budget). Before the
search, the probe's resolution (the half-width of the full-INT8 trial's interval) is compared with
the budget, and a budget below it is warned about: such a search is steered by sampling noise.

Every trial is appended to a state file (atomically) before the next starts: a killed search,
run again with the same inputs, replays the recorded trials and continues from the last one.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import json
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from quantbench.analysis.meter import GraphMeter, error_power
from quantbench.analysis.qdq_graph import LayerGroup, QdqModel
from quantbench.analysis.sensitivity import SensitivityReport, layer_sensitivity, write_sensitivity
from quantbench.analysis.setup import AnalysisOptions, AnalysisSetup, open_meter, prepare_analysis
from quantbench.build.quantize import exact_name_pattern
from quantbench.build.variants import Variant
from quantbench.cache import ArtifactCache, atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file
from quantbench.decision.gate import FAIL, INCONCLUSIVE, PASS, interval_verdict
from quantbench.decision.thresholds import Thresholds
from quantbench.decision.uncertainty import images_needed
from quantbench.errors import ConfigError, QuantbenchError
from quantbench.records import BootstrapInterval, VariantBuild
from quantbench.rules import check_counts

log = logging.getLogger(__name__)

STATE_FILE = "search_state.json"
_STATE_VERSION = 2  # 2: steps carry their drop interval and verdict
DEFAULT_CONFIDENCE = 0.95  # of drop intervals when neither SearchConfig nor thresholds.toml sets one
_TOLERANCE = 1e-12  # a drop equal to the budget up to float noise is within it


class SearchStateError(QuantbenchError):
    """A saved search state does not match the search being resumed."""


# ---------------------------------------------------------------------------------------------
# Cost


class CostModel(Protocol):
    """What keeping one group out of INT8 costs (higher is worse); only ratios matter."""

    name: str

    def cost(self, group: LayerGroup) -> float: ...


@dataclass(frozen=True)
class FlopCost:
    """One layer, plus its FLOPs in units of the model's mean linear layer (a conv of average size costs 2)."""

    mean_linear_flops: float
    name: str = "flops"

    @classmethod
    def for_model(cls, qdq: QdqModel) -> FlopCost:
        linear = [g.flops for g in qdq.groups if g.is_linear]
        return cls(mean_linear_flops=max(1.0, sum(linear) / max(1, len(linear))))

    def cost(self, group: LayerGroup) -> float:
        return 1.0 + (group.flops / self.mean_linear_flops if group.is_linear else 0.0)


def search_order(report: SensitivityReport, qdq: QdqModel, cost: CostModel) -> tuple[str, ...]:
    """Groups in the order the search takes them out of INT8: most INT8 error removed per cost first.

    A group's lone INT8 error (its ``error_share``) is what excluding it removes, because the
    groups' errors add up (see `sensitivity.layer_sensitivity`); ties go by the whole-output error.
    """
    rows = report.by_name()

    def key(name: str) -> tuple[float, float]:
        c = cost.cost(qdq.group(name))
        return (-rows[name].error_share / c, -error_power(rows[name].only.sqnr_db) / c)

    return tuple(sorted(report.ranking, key=key))


# ---------------------------------------------------------------------------------------------
# Trace and result


class Strategy(str, enum.Enum):
    BISECT = "bisect"  # the shortest prefix of the order within budget, by bisection (few probe runs)
    GREEDY = "greedy"  # one more group at a time until within budget (a full accuracy curve)


def check_budget(budget: float) -> float:
    """``budget`` (the largest allowed drop of the probe score below the reference) if it is valid."""
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not budget >= 0:  # NaN fails >=
        raise ConfigError(f"search budget {budget!r} must be a non-negative score drop, e.g. 0.003.")
    return float(budget)


@dataclass(frozen=True)
class SearchConfig:
    """How the split is searched; the budget itself comes apart (a number, or thresholds.toml)."""

    strategy: Strategy = Strategy.BISECT
    # Never take out a group that would leave less of the linear-op FLOPs in INT8 than this (0 = no
    # floor). 0.85 is what `quantbench search` always defaulted to and docs/results.md's searches used.
    min_int8_flop_share: float = 0.85
    max_steps: int = 40  # probe evaluations, all phases together (the start point included)
    trim: bool = True  # after meeting the budget, give linear groups back to INT8 where the budget allows
    # Only groups worth a probe run are given back: each trial is one more draw of the probe's noise
    # (about +-0.3 mAP points on a few hundred COCO images), which a 0.6 % conv cannot repay.
    trim_min_flop_share: float = 0.02
    max_verify: int = 3  # real builds tried (0: no verification); each miss takes one more group out of INT8
    # Level of the drops' paired-bootstrap intervals. None: thresholds.toml's `confidence` when the
    # budget comes from there (the bench gate's level), else DEFAULT_CONFIDENCE.
    confidence: float | None = None
    resamples: int = 1000  # bootstrap resamples of each drop interval

    def __post_init__(self) -> None:
        for name in ("min_int8_flop_share", "trim_min_flop_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name}={value!r} is not a fraction between 0 and 1; pass e.g. 0.85 for 85 %.")
        check_counts(self, {"max_steps": 1, "max_verify": 0, "resamples": 2})
        if self.confidence is not None and (isinstance(self.confidence, bool)
                                            or not isinstance(self.confidence, int | float)
                                            or not 0.5 <= self.confidence < 1):
            raise ConfigError(f"confidence={self.confidence!r} is not a level from 0.5 to below 1; pass e.g. 0.95.")
        try:
            object.__setattr__(self, "strategy", Strategy(self.strategy))
        except ValueError:
            raise ConfigError(
                f"search strategy {self.strategy!r} is not one of {', '.join(s.value for s in Strategy)}."
            ) from None

    @property
    def drop_confidence(self) -> float:
        """The level the drop intervals are computed at."""
        return DEFAULT_CONFIDENCE if self.confidence is None else float(self.confidence)


@dataclass(frozen=True)
class SearchStep:
    """One trial of the search: a split and its probe score."""

    step: int
    action: str  # start | add (greedy) | prefix (bisection) | trim | verify
    group: str | None  # the group taken out (add, prefix: the prefix's last) or given back (trim)
    excluded: tuple[str, ...]  # groups out of INT8 in this trial
    score: float
    drop: float  # reference score - score
    # Paired-bootstrap interval of the drop vs the reference on the same probe images (its point is
    # the drop recomputed from the match tables); None for a probe without match tables.
    drop_interval: BootstrapInterval | None
    int8_flop_share: float
    fp16_groups: int  # len(excluded)
    within_budget: bool  # the point drop is within budget: what the search decides on
    verdict: str  # pass | fail | inconclusive: the interval against the budget (the gate's rule)
    accepted: bool  # the search moved to this split

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> SearchStep:
        """A step as `dataclasses.asdict` saved it in search_state.json."""
        interval = saved.get("drop_interval")
        return cls(**{**saved, "excluded": tuple(saved["excluded"]),
                      "drop_interval": None if interval is None else BootstrapInterval(**interval)})


def step_verdict(drop: float, interval: BootstrapInterval | None, budget: float) -> str:
    """The gate's verdict on one drop: by its interval where there is one, else by the point (pass or fail)."""
    if interval is not None:
        return interval_verdict(interval, budget)
    return PASS if drop <= budget + _TOLERANCE else FAIL


@dataclass(frozen=True)
class ProbeResolution:
    """How small a drop the probe tells from noise: the half-width of one measured drop interval."""

    interval: BootstrapInterval  # the full-INT8 trial's drop interval (the search's first trial)

    @property
    def half_width(self) -> float:
        return (self.interval.upper - self.interval.lower) / 2

    def images_for(self, budget: float) -> int | None:
        """Probe images at which the half-width shrinks to ``budget`` (as 1/sqrt(images), `images_needed`'s
        rule for a drop of 0 measured with this spread); None for a zero budget, which none resolves."""
        centred = dataclasses.replace(self.interval, point=0.0, lower=-self.half_width, upper=self.half_width)
        return images_needed(centred, budget)

    def warning(self, budget: float) -> str | None:
        """One line when ``budget`` is below the resolution (drops that small are noise to this probe)."""
        if not budget < self.half_width:
            return None
        needed = self.images_for(budget)
        advice = (f"use --probe-images N (about {needed} needed) or a larger budget" if needed else
                  "no number of probe images resolves a zero budget: use a larger budget")
        return (f"budget {100 * budget:.2f} points is below the probe's resolution (+-{100 * self.half_width:.2f} "
                f"points at {100 * self.interval.confidence:g} % on {self.interval.images} images): the search "
                f"cannot tell such drops from noise; {advice}")


@dataclass(frozen=True)
class SearchOutcome:
    reference_score: float
    budget: float
    excluded: tuple[str, ...]  # graph order
    score: float  # probe score of the simulated split
    verified_score: float | None  # probe score of the real build, where verified
    met_budget: bool  # the final split's point drop (the real build's where verified) is within budget
    int8_flop_share: float
    steps: tuple[SearchStep, ...]
    # The final split's (the real build's where verified) drop interval and the gate's verdict on it;
    # without an interval, the point's pass or fail.
    verdict: str = PASS
    drop_interval: BootstrapInterval | None = None
    images_needed: int | None = None  # for an inconclusive verdict: probe images that would likely decide it
    resolution: ProbeResolution | None = None
    warnings: tuple[str, ...] = ()  # e.g. the budget below the probe's resolution


_Measured = tuple[float, BootstrapInterval | None]  # a trial's probe score and drop interval


class _Ledger:
    """The recorded trials: replayed first on a resumed search, appended and saved after each new one."""

    def __init__(self, path: Path | None, header: dict[str, Any]):
        self.path, self.header = path, header
        self.steps: list[SearchStep] = []
        self.recorded: list[SearchStep] = []
        if path is not None and path.exists():
            saved = json.loads(path.read_text())
            if saved.get("version") == _STATE_VERSION and saved.get("header") == header:
                self.recorded = [SearchStep.from_dict(s) for s in saved["steps"]]
                log.info("resuming the search in %s after %d recorded trials", path, len(self.recorded))
            else:
                log.info("%s belongs to another search (different inputs): starting over", path)

    def trial(self, action: str, group: str | None, excluded: Sequence[str], measure: Callable[[], _Measured],
              make: Callable[[int, _Measured], SearchStep]) -> SearchStep:
        index = len(self.steps)
        if index < len(self.recorded):
            step = self.recorded[index]
            if (step.action, step.group, step.excluded) != (action, group, tuple(excluded)):
                raise SearchStateError(
                    f"{self.path}: trial {index} was {step.action} {step.group!r} but this run reached "
                    f"{action} {group!r}; delete {self.path} to start the search over."
                )
        else:
            step = make(index, measure())
        self.steps.append(step)
        if index >= len(self.recorded) and self.path is not None:
            atomic_write_json(self.path, {"version": _STATE_VERSION, "header": self.header,
                                          "steps": [dataclasses.asdict(s) for s in self.steps]})
        return step


def within_floor(qdq: QdqModel, order: Sequence[str], min_int8_flop_share: float) -> list[str]:
    """The groups of ``order``, in order, that can all leave INT8 without the share going below the floor."""
    taken: list[str] = []
    for name in order:
        if qdq.int8_flop_share([*taken, name]) >= min_int8_flop_share - 1e-12:
            taken.append(name)
    return taken


def search_split(
    meter: GraphMeter,
    order: Sequence[str],
    *,
    reference_score: float,
    budget: float,
    config: SearchConfig = SearchConfig(),
    cost: CostModel | None = None,
    verify: Callable[[tuple[str, ...]], Path] | None = None,
    reference_onnx: Path | None = None,
    state_path: Path | None = None,
    progress: bool = True,
) -> SearchOutcome:
    """Find the cheapest split within ``budget`` of ``reference_score``, taking groups in ``order``.

    Forward phase (``config.strategy``): the shortest prefix of ``order`` (less any group that
    would break ``config.min_int8_flop_share``) whose probe score is within budget. Trim phase:
    each linear group of that prefix with at least ``config.trim_min_flop_share`` of the FLOPs,
    the costliest first, is given back to INT8 if the budget still holds. ``verify(excluded)``
    builds the split for real and returns the built ONNX, which the meter's probe scores; a miss
    takes the next group out and builds again. ``reference_onnx`` (the FP32 model ``reference_score``
    is the probe score of) gives every drop its paired-bootstrap interval where the probe keeps match
    tables (`meter.MatchingProbe`), at ``config.drop_confidence``. ``state_path`` makes the search
    resumable. The trials decide on point drops; verdicts use the intervals (the module's docstring).
    """
    budget = check_budget(budget)
    meter.qdq.check_names(order)
    if config.confidence is None:  # the level in use is part of the ledger's header
        config = dataclasses.replace(config, confidence=config.drop_confidence)
    sequence = within_floor(meter.qdq, list(dict.fromkeys(order)), config.min_int8_flop_share)
    search = _SplitSearch(meter, sequence, reference_score, budget, config, cost or FlopCost.for_model(meter.qdq),
                          verify, reference_onnx, state_path, progress)
    with search.bar:
        search.start()
        search.forward()
        search.trim()
        search.verify_split()
    return search.outcome()


class _SplitSearch:
    """The state of one `search_split`: the split now accepted, the trials so far, the ledger."""

    def __init__(self, meter: GraphMeter, sequence: list[str], reference_score: float, budget: float,
                 config: SearchConfig, cost: CostModel, verify: Callable[[tuple[str, ...]], Path] | None,
                 reference_onnx: Path | None, state_path: Path | None, progress: bool):
        self.meter, self.qdq, self.sequence = meter, meter.qdq, sequence
        self.reference, self.budget, self.config, self.cost, self.verify = reference_score, budget, config, cost, verify
        self.reference_onnx = reference_onnx
        self.all_groups = frozenset(self.qdq.group_names)
        header = {"qdq": meter.qdq_hash, "probe": meter.probe.fingerprint() if meter.probe else None,
                  "order": sequence, "reference": reference_score, "budget": budget,
                  "config": {**dataclasses.asdict(config), "strategy": config.strategy.value},
                  "cost": cost.name, "verify": verify is not None,
                  "reference_onnx": sha256_file(reference_onnx) if reference_onnx is not None else None}
        self.ledger = _Ledger(state_path, header)
        self.bar = tqdm(total=config.max_steps, desc="search", unit="trial", disable=not progress)
        self.accepted: list[SearchStep] = []
        self.current: SearchStep  # the split the search is on: set by `start`
        self.excluded: list[str] = []  # its groups out of INT8
        self.pending: list[str] = []  # groups of the sequence still in INT8, in order
        self.verified: SearchStep | None = None  # the last real build's trial
        self.resolution: ProbeResolution | None = None
        self.warnings: list[str] = []

    def graph_order(self, names: Collection[str]) -> tuple[str, ...]:
        chosen = set(names)
        return tuple(n for n in self.qdq.group_names if n in chosen)

    def steps_left(self) -> bool:
        return len(self.ledger.steps) < self.config.max_steps

    def run(self, action: str, group: str | None, excluded: Sequence[str],
            build: Callable[[], Path] | None = None) -> SearchStep:
        """One trial (replayed from the ledger where recorded): the split with ``excluded`` out of INT8,
        simulated on a derived graph, or the ONNX ``build`` makes (a real build)."""
        excluded = self.graph_order(excluded)

        def measure() -> _Measured:
            meter, reference, config = self.meter, self.reference_onnx, self.config
            intervals = {"resamples": config.resamples, "confidence": config.drop_confidence}
            if build is not None:
                path = build()
                return (meter.probe_score_of_file(path),
                        None if reference is None else meter.probe_drop_of_file(path, reference, **intervals))
            quantized = self.all_groups - set(excluded)
            return (meter.probe_score(quantized),
                    None if reference is None else meter.probe_drop(quantized, reference, **intervals))

        def make(index: int, measured: _Measured) -> SearchStep:
            score, interval = float(measured[0]), measured[1]
            drop = self.reference - score
            return SearchStep(step=index, action=action, group=group, excluded=excluded, score=score, drop=drop,
                              drop_interval=interval, int8_flop_share=self.qdq.int8_flop_share(excluded),
                              fp16_groups=len(excluded), within_budget=drop <= self.budget + _TOLERANCE,
                              verdict=step_verdict(drop, interval, self.budget), accepted=False)

        step = self.ledger.trial(action, group, excluded, measure, make)
        self.bar.update()
        self.bar.set_postfix_str(f"{action} drop={step.drop:+.4f} int8={100 * step.int8_flop_share:.1f}%",
                                 refresh=False)
        return step

    def accept(self, step: SearchStep) -> SearchStep:
        self.current = step
        self.accepted.append(step)
        return step

    def start(self) -> None:
        """Full INT8, the first trial; its drop interval is the probe's resolution, warned about if too coarse."""
        start = self.accept(self.run("start", None, ()))
        if start.drop_interval is None:
            return
        self.resolution = ProbeResolution(start.drop_interval)
        warning = self.resolution.warning(self.budget)
        if warning:
            log.warning("%s", warning)
            self.warnings.append(warning)

    def forward(self) -> None:
        """From full INT8 (`start`), the shortest prefix of the sequence out of INT8 that is within budget."""
        taken = 0  # length of the prefix of the sequence now out of INT8
        if not self.current.within_budget and self.sequence:
            if self.config.strategy is Strategy.GREEDY:
                taken = self._forward_greedy()
            elif self.steps_left():
                taken = self._forward_bisect()
        self.excluded = list(self.sequence[:taken])
        self.pending = list(self.sequence[taken:])

    def _forward_greedy(self) -> int:
        taken = 0
        while not self.current.within_budget and taken < len(self.sequence) and self.steps_left():
            taken += 1
            self.accept(self.run("add", self.sequence[taken - 1], self.sequence[:taken]))
        return taken

    def _forward_bisect(self) -> int:
        """Bisection on the prefix length, assuming more groups out never scores worse."""
        sequence = self.sequence
        failing, passing = 0, len(sequence)
        top = self.run("prefix", sequence[-1], sequence)
        if not top.within_budget:
            self.accept(top)  # out of reach: report the best effort
            return len(sequence)
        best = top
        while passing - failing > 1 and self.steps_left():
            mid = (failing + passing) // 2
            step = self.run("prefix", sequence[mid - 1], sequence[:mid])
            if step.within_budget:
                passing, best = mid, step
            else:
                failing = mid
        self.accept(best)
        return passing

    def trim(self) -> None:
        """Give each large linear group back to INT8, the costliest first, where the budget still holds."""
        if not (self.current.within_budget and self.config.trim):
            return
        total = self.qdq.linear_flops_total or 1
        worth = [n for n in self.excluded
                 if self.qdq.group(n).is_linear and self.qdq.group(n).flops / total >= self.config.trim_min_flop_share]
        for group in sorted(worth, key=lambda n: -self.cost.cost(self.qdq.group(n))):
            if not self.steps_left():
                break
            trial = [n for n in self.excluded if n != group]
            step = self.run("trim", group, trial)
            if step.within_budget:
                self.excluded = trial
                self.accept(step)

    def verify_split(self) -> None:
        """Build the split for real; while the build misses, take one more group out and build again.

        A split out of reach (best effort) is built and scored too, but not extended further.
        """
        if self.verify is None or self.config.max_verify == 0:
            return
        verify = self.verify
        for _ in range(self.config.max_verify):
            frozen = self.graph_order(self.excluded)
            check = self.run("verify", None, frozen, lambda: verify(frozen))
            self.verified = check
            # The point decides whether to take one more group out (as for the trials); the verdict is the interval's.
            if check.within_budget or not self.current.within_budget or not self.pending or not self.steps_left():
                break
            group = self.pending.pop(0)
            self.excluded.append(group)
            self.accept(self.run("add", group, self.excluded))

    def outcome(self) -> SearchOutcome:
        accepted_ids = {s.step for s in self.accepted}
        steps = tuple(dataclasses.replace(s, accepted=s.step in accepted_ids) for s in self.ledger.steps)
        final_excluded = self.graph_order(self.excluded)
        # The real build, where there is one, has the last word: the simulation only predicts it.
        final = self.verified if self.verified is not None else self.current
        interval = final.drop_interval
        return SearchOutcome(
            reference_score=self.reference, budget=self.budget, excluded=final_excluded, score=self.current.score,
            verified_score=self.verified.score if self.verified is not None else None,
            met_budget=final.within_budget, int8_flop_share=self.qdq.int8_flop_share(final_excluded), steps=steps,
            verdict=final.verdict, drop_interval=interval,
            images_needed=images_needed(interval, self.budget) if interval and final.verdict == INCONCLUSIVE else None,
            resolution=self.resolution, warnings=tuple(self.warnings),
        )


# ---------------------------------------------------------------------------------------------
# The variant entry and the report


def variant_toml(variant: Variant) -> str:
    """One ``[[variant]]`` table for bench/variants.toml from a `variants.Variant` (defaults left out)."""
    defaults = {f.name: f.default for f in dataclasses.fields(variant)}
    lines = ["[[variant]]", f"name = {json.dumps(variant.name)}"]
    for key, value in variant.options().items():
        default = defaults.get(key)
        if value is None or value == default or (isinstance(default, tuple) and value == list(default)):
            continue  # the default (None included, which TOML cannot spell)
        if isinstance(value, list):
            if not value:
                lines.append(f"{key} = []")
                continue
            lines.append(f"{key} = [")
            lines += [f"  {json.dumps(v)}," for v in value]  # JSON string escapes are valid TOML
            lines.append("]")
        elif isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    if not variant.gated:
        lines.append("gated = false")
    if variant.description:
        lines.append(f"description = {json.dumps(variant.description)}")
    return "\n".join(lines) + "\n"


def excluded_patterns(excluded: Sequence[str]) -> tuple[str, ...]:
    """ModelOpt ``nodes_to_exclude`` patterns that match exactly these node names."""
    return tuple(exact_name_pattern(n) for n in excluded)


@dataclass(frozen=True)
class SearchResult:
    model: str
    variant_name: str
    outcome: SearchOutcome
    variant_toml: str
    probe: str
    cost_model: str
    files: dict[str, str] = field(default_factory=dict)
    build: VariantBuild | None = None  # the verified variant, where built


def _interval_text(ci: BootstrapInterval | None) -> str:
    return "" if ci is None else f"{ci.lower:+.5f} to {ci.upper:+.5f}"


def verdict_sentence(o: SearchOutcome) -> str:
    """The final split's verdict against the budget, with its interval (search.md, the command line)."""
    ci = o.drop_interval
    if ci is None:
        return f"verdict {o.verdict} (point drop only: the probe keeps no match tables)"
    text = (f"verdict {o.verdict}: drop {ci.point:+.5f}, {100 * ci.confidence:g} % interval "
            f"{_interval_text(ci)} on {ci.images} probe images, against the budget {o.budget:.5f}")
    if o.verdict == INCONCLUSIVE:
        text += (f"; about {o.images_needed} probe images would likely decide it" if o.images_needed else
                 "; its point sits on the budget: no number of probe images is likely to decide it")
    return text


def search_markdown(result: SearchResult, qdq: QdqModel) -> str:
    o = result.outcome
    verdict = "met" if o.met_budget else "NOT met"
    level = next((f"{100 * s.drop_interval.confidence:g} % " for s in o.steps if s.drop_interval), "")
    lines = [
        f"# FP16/INT8 split search for {result.model}",
        "",
        f"- Probe: {result.probe}; reference (FP32) score {o.reference_score:.5f}, budget: drop <= {o.budget:.5f}",
        *([f"- Probe resolution: +-{o.resolution.half_width:.5f} ({100 * o.resolution.half_width:.2f} mAP points: "
           f"the {100 * o.resolution.interval.confidence:g} % interval half-width of the full-INT8 drop on "
           f"{o.resolution.interval.images} images)"]
          if o.resolution else []),
        *[f"- **Warning**: {w}" for w in o.warnings],
        f"- Result: {len(o.excluded)} of {len(qdq.groups)} layer groups kept out of INT8; "
        f"INT8 share of linear-op FLOPs {100 * o.int8_flop_share:.1f} %; "
        f"simulated probe score {o.score:.5f} (drop {o.reference_score - o.score:+.5f})"
        + (f"; real build {o.verified_score:.5f} (drop {o.reference_score - o.verified_score:+.5f})"
           if o.verified_score is not None else "")
        + f"; budget {verdict} by the point drop; {verdict_sentence(o)}.",
        f"- Cost model: {result.cost_model}",
        "- How it decides: each trial is accepted or rejected on its point drop (the best estimate; cheap, "
        "deterministic, and a yes or no for the bisection). Its interval (paired bootstrap over the probe "
        "images vs FP32) and verdict are shown beside it: pass = the whole interval within the budget, "
        "fail = all beyond it, inconclusive = it straddles the budget. The final verdict is the real "
        "build's, by that same rule as the bench gate's.",
        "",
        "## Variant entry (for bench/variants.toml)",
        "",
        "```toml",
        result.variant_toml.rstrip(),
        "```",
        "",
        "## Trace",
        "",
        f"| step | action | group | FP16 groups | INT8 FLOP % | probe score | drop | {level}drop interval | "
        "within budget | verdict | accepted |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for s in o.steps:
        lines.append(
            f"| {s.step} | {s.action} | {'' if s.group is None else f'`{s.group}`'} | {s.fp16_groups} | "
            f"{100 * s.int8_flop_share:.1f} | {s.score:.5f} | {s.drop:+.5f} | {_interval_text(s.drop_interval)} | "
            f"{'yes' if s.within_budget else 'no'} | {s.verdict} | {'yes' if s.accepted else ''} |"
        )
    lines += ["", "## Groups kept out of INT8", ""]
    lines += [f"- `{n}` ({qdq.group(n).op_type}, {qdq.group(n).flops / 1e9:.3f} GFLOPs)" for n in o.excluded]
    return "\n".join(lines) + "\n"


def search_curve(result: SearchResult, path: Path) -> Path:
    """Probe score against the number of groups out of INT8, every trial marked, budget line drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    o = result.outcome
    fig, ax = plt.subplots(figsize=(8, 5))
    forward = sorted((s for s in o.steps if s.action in ("start", "add", "prefix")), key=lambda s: s.fp16_groups)
    ax.plot([s.fp16_groups for s in forward], [s.score for s in forward], "o-", color="tab:blue",
            label="taking groups out of INT8, in search order")
    for action, marker, color in (("trim", "s", "tab:orange"), ("verify", "*", "tab:red")):
        pts = [s for s in o.steps if s.action == action]
        if pts:
            label = "giving a group back to INT8" if action == "trim" else "real ModelOpt build"
            ax.scatter([s.fp16_groups for s in pts], [s.score for s in pts], marker=marker, s=70, color=color,
                       label=label, zorder=3)
    with_interval = [s for s in o.steps if s.drop_interval is not None]
    if with_interval:  # the score's interval is the reference minus the drop's
        below = [max(0.0, s.drop_interval.upper - s.drop) for s in with_interval]
        above = [max(0.0, s.drop - s.drop_interval.lower) for s in with_interval]
        level = with_interval[0].drop_interval.confidence
        ax.errorbar([s.fp16_groups for s in with_interval], [s.score for s in with_interval], yerr=[below, above],
                    fmt="none", ecolor="grey", elinewidth=1, capsize=3, zorder=2,
                    label=f"{100 * level:g} % interval of the drop vs FP32 (paired bootstrap)")
    ax.axhline(o.reference_score, color="black", lw=1, label="reference (FP32)")
    ax.axhline(o.reference_score - o.budget, color="tab:green", ls="--", lw=1, label="budget")
    for s in forward:
        ax.annotate(f"{100 * s.int8_flop_share:.0f}%", (s.fp16_groups, s.score), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=7)
    ax.set_xlabel("layer groups kept out of INT8 (labels: INT8 share of FLOPs)")
    ax.set_ylabel(result.probe)
    ax.set_title(f"{result.model}: probe score vs layers out of INT8")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def write_search(result: SearchResult, qdq: QdqModel, out_dir: Path) -> SearchResult:
    """Write search.md, search_curve.png and <variant>.toml; the result with their paths."""
    out_dir = Path(out_dir)
    files = {
        "markdown": atomic_write_text(out_dir / "search.md", search_markdown(result, qdq)),
        "curve": search_curve(result, out_dir / "search_curve.png"),
        "variant": atomic_write_text(out_dir / f"{result.variant_name}.toml", result.variant_toml),
    }
    return dataclasses.replace(result, files={k: str(v) for k, v in files.items()})


# ---------------------------------------------------------------------------------------------
# Library entry point (what `quantbench search` calls)


def run_search(
    model: str | Path,
    calib_folder: Path,
    probe_folder: Path,
    out_dir: Path,
    *,
    cache: ArtifactCache,
    budget: float | None = None,
    thresholds: Path | None = None,
    options: AnalysisOptions = AnalysisOptions(),
    config: SearchConfig = SearchConfig(),
    progress: bool = True,
) -> SearchResult:
    """Find the cheapest FP16/INT8 split of ``model`` whose probe mAP50-95 drop vs FP32 is within ``budget``.

    ``budget`` (a fraction: 0.003 = 0.3 mAP points) defaults to ``max_abs_drop`` for the model in
    ``thresholds`` (a thresholds.toml, read before any work), whose ``confidence`` then also sets the
    level of the drop intervals unless ``config.confidence`` does. ``options`` says how the INT8 build
    is analysed (``options.groups`` restricts the analysis and the search to those layer groups),
    ``config`` how the split is searched (``strategy``, ``min_int8_flop_share``, ``max_steps``;
    ``max_verify=0`` skips the real build).
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
    budget_for = _budget_source(budget, thresholds)  # both sources are checked before any work
    setup = prepare_analysis(model, calib_folder, probe_folder, cache, options)
    model_budget, confidence = budget_for(setup.model.name)
    if config.confidence is None:
        config = dataclasses.replace(config, confidence=confidence)
    out_dir = Path(out_dir)
    qdq, meter = open_meter(setup)
    with meter:
        report = layer_sensitivity(meter, model=setup.model.name, top_k=options.top_k, groups=options.groups,
                                   fp32_onnx=Path(setup.model.path), progress=progress)
        write_sensitivity(report, out_dir)
        result = _search(setup, qdq, meter, report, model_budget, config, out_dir, progress)
        return write_search(result, qdq, out_dir)


def _budget_source(budget: float | None, thresholds: Path | None) -> Callable[[str], tuple[float, float]]:
    """Model name -> its budget and the level of its intervals: ``budget`` itself at DEFAULT_CONFIDENCE,
    else ``max_abs_drop`` and ``confidence`` of the model in ``thresholds`` (read now)."""
    if budget is not None:
        given = check_budget(budget)
        return lambda model: (given, DEFAULT_CONFIDENCE)
    if thresholds is None:
        raise ConfigError("no search budget given; pass budget= (e.g. 0.003) or a thresholds.toml.")
    limits = Thresholds.load(Path(thresholds))
    return lambda model: (limits.for_model(model).max_abs_drop, limits.for_model(model).confidence)


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


def _search(setup: AnalysisSetup, qdq: QdqModel, meter: GraphMeter, report: SensitivityReport, budget: float,
            config: SearchConfig, out_dir: Path, progress: bool) -> SearchResult:
    """Search the split from the sensitivity ranking, verify it with a real build, describe the result."""
    cost = FlopCost.for_model(qdq)
    reference = meter.probe_score_of_file(Path(setup.model.path))
    builder = _SplitBuilder(setup, qdq, meter, budget)
    verify = config.max_verify > 0
    outcome = search_split(meter, search_order(report, qdq, cost), reference_score=reference, budget=budget,
                           config=config, cost=cost, verify=builder.build if verify else None,
                           reference_onnx=Path(setup.model.path), state_path=out_dir / STATE_FILE, progress=progress)
    if verify and outcome.excluded not in builder.builds and outcome.verified_score is not None:
        builder.build(outcome.excluded)  # a resumed search: the build comes from the cache
    return SearchResult(
        model=setup.model.name, variant_name=setup.options.variant_name, outcome=outcome,
        variant_toml=variant_toml(builder.variant(outcome.excluded)),
        probe=meter.probe.description if meter.probe else "",
        cost_model=f"{cost.name} (FP16 layers weighted by FLOPs: 1 + FLOPs / mean linear-layer FLOPs)",
        build=builder.builds.get(outcome.excluded),
    )
