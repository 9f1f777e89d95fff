"""What a split search optimises and how: the cost of keeping a group out of INT8, the order groups
leave INT8 in, the budget check and `SearchConfig` (its knobs, defaults of `quantbench search`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from quantbench.analysis.meter import error_power
from quantbench.analysis.sensitivity import SensitivityReport
from quantbench.build.qdq_graph import LayerGroup, QdqModel
from quantbench.errors import ConfigError
from quantbench.rules import check_confidence, check_counts, check_number, is_number

DEFAULT_CONFIDENCE = 0.95  # of drop intervals when neither SearchConfig nor thresholds.toml sets one


class CostModel(Protocol):
    """What keeping one group out of INT8 costs (higher is worse); only ratios matter."""

    @property
    def name(self) -> str: ...

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


class Strategy(str, enum.Enum):
    BISECT = "bisect"  # the shortest prefix of the order within budget, by bisection (few probe runs)
    GREEDY = "greedy"  # one more group at a time until within budget (a full accuracy curve)


def check_budget(budget: float) -> float:
    """``budget`` (the largest allowed drop of the probe score below the reference) if it is valid."""
    if not (is_number(budget) and budget >= 0):
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
            check_number(getattr(self, name), name, low=0.0, high=1.0, fix="pass e.g. 0.85 for 85 %")
        check_counts(self, {"max_steps": 1, "max_verify": 0, "resamples": 2})
        if self.confidence is not None:
            check_confidence(self.confidence, "confidence")
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
