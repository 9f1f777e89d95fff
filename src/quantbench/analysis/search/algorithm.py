"""The split search itself: from full INT8, take groups out in order until the probe's drop is within
budget (bisection or greedy), give large linear groups back where the budget still holds (trim), and
confirm the split on a real build (verify). See the package docstring for why trials decide on the
point drop while verdicts use the intervals."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from quantbench.analysis.meter import GraphMeter
from quantbench.analysis.search.config import CostModel, FlopCost, SearchConfig, Strategy, check_budget
from quantbench.analysis.search.state import Ledger, Measured, ProbeResolution, SearchOutcome, SearchStep
from quantbench.build.qdq_graph import QdqModel
from quantbench.cache import sha256_file
from quantbench.decision.gate import INCONCLUSIVE, drop_verdict
from quantbench.decision.uncertainty import images_needed
from quantbench.rules import within

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitTarget:
    """What a split is held to: the FP32 reference's probe score and the budget of the drop below it.

    ``reference_onnx`` (the FP32 model ``reference_score`` is the probe score of) gives every drop its
    paired-bootstrap interval where the probe keeps match tables (`meter.MatchingProbe`).
    """

    reference_score: float
    budget: float
    reference_onnx: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "budget", check_budget(self.budget))


@dataclass(frozen=True)
class SearchHooks:
    """How one search is carried out, beside what it finds: the cost model (None: `FlopCost` of the
    model), ``verify(excluded)`` (builds the split for real and returns the built ONNX, which the
    meter's probe scores; None: no real build), the resumable state file, and a progress bar."""

    cost: CostModel | None = None
    verify: Callable[[tuple[str, ...]], Path] | None = None
    state_path: Path | None = None
    progress: bool = True


_DEFAULT_CONFIG = SearchConfig()
_NO_HOOKS = SearchHooks()


def within_floor(qdq: QdqModel, order: Sequence[str], min_int8_flop_share: float) -> list[str]:
    """The groups of ``order``, in order, that can all leave INT8 without the share going below the floor."""
    taken: list[str] = []
    for name in order:
        if within(min_int8_flop_share, qdq.int8_flop_share([*taken, name])):
            taken.append(name)
    return taken


def search_split(meter: GraphMeter, order: Sequence[str], target: SplitTarget,
                 config: SearchConfig = _DEFAULT_CONFIG, hooks: SearchHooks = _NO_HOOKS) -> SearchOutcome:
    """Find the cheapest split within ``target.budget`` of ``target.reference_score``, taking groups in ``order``.

    Forward phase (``config.strategy``): the shortest prefix of ``order`` (less any group that
    would break ``config.min_int8_flop_share``) whose probe score is within budget. Trim phase:
    each linear group of that prefix with at least ``config.trim_min_flop_share`` of the FLOPs,
    the costliest first, is given back to INT8 if the budget still holds. ``hooks.verify`` builds
    the split for real; a miss takes the next group out and builds again. Drop intervals are at
    ``config.drop_confidence``; ``hooks.state_path`` makes the search resumable.
    """
    meter.qdq.check_names(order)
    if config.confidence is None:  # the level in use is part of the ledger's header
        config = dataclasses.replace(config, confidence=config.drop_confidence)
    sequence = within_floor(meter.qdq, list(dict.fromkeys(order)), config.min_int8_flop_share)
    search = _SplitSearch(_Trials(meter, sequence, target, config, hooks), sequence, hooks.verify)
    with search.trials.bar:
        search.start()
        search.forward()
        search.trim()
        search.verify_split()
    return search.outcome()


class _Trials:
    """Measuring splits: each trial simulated on a derived graph (or a real build), recorded in the ledger."""

    def __init__(self, meter: GraphMeter, sequence: list[str], target: SplitTarget, config: SearchConfig,
                 hooks: SearchHooks):
        self.meter, self.qdq, self.target, self.config = meter, meter.qdq, target, config
        self.cost: CostModel = hooks.cost or FlopCost.for_model(meter.qdq)
        self.all_groups = frozenset(self.qdq.group_names)
        reference_onnx = target.reference_onnx
        header = {"qdq": meter.qdq_hash, "probe": meter.probe.fingerprint() if meter.probe else None,
                  "order": sequence, "reference": target.reference_score, "budget": target.budget,
                  "config": {**dataclasses.asdict(config), "strategy": config.strategy.value},
                  "cost": self.cost.name, "verify": hooks.verify is not None,
                  "reference_onnx": sha256_file(reference_onnx) if reference_onnx is not None else None}
        self.ledger = Ledger(hooks.state_path, header)
        self.bar = tqdm(total=config.max_steps, desc="search", unit="trial", disable=not hooks.progress)

    def graph_order(self, names: Collection[str]) -> tuple[str, ...]:
        chosen = set(names)
        return tuple(n for n in self.qdq.group_names if n in chosen)

    def left(self) -> bool:
        """Whether another trial fits in ``config.max_steps``."""
        return len(self.ledger.steps) < self.config.max_steps

    def run(self, action: str, group: str | None, excluded: Sequence[str],
            build: Callable[[], Path] | None = None) -> SearchStep:
        """One trial (replayed from the ledger where recorded): the split with ``excluded`` out of INT8,
        simulated on a derived graph, or the ONNX ``build`` makes (a real build)."""
        ordered = self.graph_order(excluded)
        step = self.ledger.trial(action, group, ordered, lambda: self._measure(ordered, build),
                                 lambda index, measured: self._step(index, action, group, ordered, measured))
        self.bar.update()
        self.bar.set_postfix_str(f"{action} drop={step.drop:+.4f} int8={100 * step.int8_flop_share:.1f}%",
                                 refresh=False)
        return step

    def _measure(self, excluded: tuple[str, ...], build: Callable[[], Path] | None) -> Measured:
        meter, reference, config = self.meter, self.target.reference_onnx, self.config
        resamples, confidence = config.resamples, config.drop_confidence
        if build is not None:
            path = build()
            return (meter.probe_score_of_file(path), None if reference is None else
                    meter.probe_drop_of_file(path, reference, resamples=resamples, confidence=confidence))
        quantized = self.all_groups - set(excluded)
        return (meter.probe_score(quantized), None if reference is None else
                meter.probe_drop(quantized, reference, resamples=resamples, confidence=confidence))

    def _step(self, index: int, action: str, group: str | None, excluded: tuple[str, ...],
              measured: Measured) -> SearchStep:
        score, interval = float(measured[0]), measured[1]
        drop, budget = self.target.reference_score - score, self.target.budget
        return SearchStep(step=index, action=action, group=group, excluded=excluded, score=score, drop=drop,
                          drop_interval=interval, int8_flop_share=self.qdq.int8_flop_share(excluded),
                          fp16_groups=len(excluded), within_budget=within(drop, budget),
                          verdict=drop_verdict(drop, interval, budget), accepted=False)


class _SplitSearch:
    """The phases of one `search_split` and its state: the split now accepted, what is left to take out."""

    def __init__(self, trials: _Trials, sequence: list[str], verify: Callable[[tuple[str, ...]], Path] | None):
        self.trials, self.sequence, self.verify = trials, sequence, verify
        self.qdq, self.config, self.budget = trials.qdq, trials.config, trials.target.budget
        self.accepted: list[SearchStep] = []
        self.current: SearchStep  # the split the search is on: set by `start`
        self.excluded: list[str] = []  # its groups out of INT8
        self.pending: list[str] = []  # groups of the sequence still in INT8, in order
        self.verified: SearchStep | None = None  # the last real build's trial
        self.resolution: ProbeResolution | None = None
        self.warnings: list[str] = []

    def accept(self, step: SearchStep) -> SearchStep:
        self.current = step
        self.accepted.append(step)
        return step

    def start(self) -> None:
        """Full INT8, the first trial; its drop interval is the probe's resolution, warned about if too coarse."""
        start = self.accept(self.trials.run("start", None, ()))
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
            elif self.trials.left():
                taken = self._forward_bisect()
        self.excluded = list(self.sequence[:taken])
        self.pending = list(self.sequence[taken:])

    def _forward_greedy(self) -> int:
        taken = 0
        while not self.current.within_budget and taken < len(self.sequence) and self.trials.left():
            taken += 1
            self.accept(self.trials.run("add", self.sequence[taken - 1], self.sequence[:taken]))
        return taken

    def _forward_bisect(self) -> int:
        """Bisection on the prefix length, assuming more groups out never scores worse."""
        sequence = self.sequence
        failing, passing = 0, len(sequence)
        top = self.trials.run("prefix", sequence[-1], sequence)
        if not top.within_budget:
            self.accept(top)  # out of reach: report the best effort
            return len(sequence)
        best = top
        while passing - failing > 1 and self.trials.left():
            mid = (failing + passing) // 2
            step = self.trials.run("prefix", sequence[mid - 1], sequence[:mid])
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
        for group in sorted(worth, key=lambda n: -self.trials.cost.cost(self.qdq.group(n))):
            if not self.trials.left():
                break
            trial = [n for n in self.excluded if n != group]
            step = self.trials.run("trim", group, trial)
            if step.within_budget:
                self.excluded = trial
                self.accept(step)

    def verify_split(self) -> None:
        """Build the split for real; while the build misses, take one more group out and build again.

        A split out of reach (best effort) is built and scored too, but not extended further.
        """
        verify = self.verify
        if verify is None or self.config.max_verify == 0:
            return
        for _ in range(self.config.max_verify):
            frozen = self.trials.graph_order(self.excluded)
            check = self.trials.run("verify", None, frozen, functools.partial(verify, frozen))
            self.verified = check
            # The point decides whether to take one more group out (as for the trials); the verdict is the interval's.
            if check.within_budget or not self.current.within_budget or not self.pending or not self.trials.left():
                break
            group = self.pending.pop(0)
            self.excluded.append(group)
            self.accept(self.trials.run("add", group, self.excluded))

    def outcome(self) -> SearchOutcome:
        accepted_ids = {s.step for s in self.accepted}
        steps = tuple(dataclasses.replace(s, accepted=s.step in accepted_ids) for s in self.trials.ledger.steps)
        final_excluded = self.trials.graph_order(self.excluded)
        # The real build, where there is one, has the last word: the simulation only predicts it.
        final = self.verified if self.verified is not None else self.current
        interval = final.drop_interval
        return SearchOutcome(
            reference_score=self.trials.target.reference_score, budget=self.budget, excluded=final_excluded,
            score=self.current.score, verified_score=self.verified.score if self.verified is not None else None,
            met_budget=final.within_budget, int8_flop_share=self.qdq.int8_flop_share(final_excluded), steps=steps,
            verdict=final.verdict, drop_interval=interval,
            images_needed=images_needed(interval, self.budget) if interval and final.verdict == INCONCLUSIVE else None,
            resolution=self.resolution, warnings=tuple(self.warnings),
        )
