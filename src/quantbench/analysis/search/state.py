"""A search's record: its trials (`SearchStep`), the probe's resolution, the outcome, and the ledger
that saves every trial (atomically) before the next starts, so that a killed search, run again with
the same inputs, replays the recorded trials and continues from the last one."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantbench.cache import atomic_write_json
from quantbench.decision.gate import PASS
from quantbench.decision.uncertainty import images_needed
from quantbench.errors import QuantbenchError
from quantbench.records import BootstrapInterval

log = logging.getLogger(__name__)

STATE_FILE = "search_state.json"
_STATE_VERSION = 2  # 2: steps carry their drop interval and verdict


class SearchStateError(QuantbenchError):
    """A saved search state does not match the search being resumed."""


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
    within_budget: bool  # the point drop is within budget (`rules.within`): what the search decides on
    verdict: str  # pass | fail | inconclusive: `gate.drop_verdict` of the drop against the budget
    accepted: bool  # the search moved to this split

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> SearchStep:
        """A step as `dataclasses.asdict` saved it in search_state.json."""
        interval = saved.get("drop_interval")
        return cls(**{**saved, "excluded": tuple(saved["excluded"]),
                      "drop_interval": None if interval is None else BootstrapInterval(**interval)})


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


Measured = tuple[float, BootstrapInterval | None]  # a trial's probe score and drop interval


class Ledger:
    """The recorded trials: replayed first on a resumed search, appended and saved after each new one.

    ``header`` holds every input that shapes the trials; a saved state with another header belongs to
    another search and is started over.
    """

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

    def trial(self, action: str, group: str | None, excluded: Sequence[str], measure: Callable[[], Measured],
              make: Callable[[int, Measured], SearchStep]) -> SearchStep:
        """The next trial: replayed where recorded (it must be the same trial), else measured and saved."""
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
