"""How long a latency measurement runs: warm-up rounds, then a minimum count *and* a minimum duration.

A round count alone ties the measurement's length to the model and the device: 50 rounds are
2.5 s of a 50 ms CPU inference but 50 ms of a 1 ms TensorRT engine, too short to settle clocks and
dwarfed by the seconds it took to load the engine. Like trtexec (``--warmUp``, ``--duration``,
``--iterations``), each measurement therefore warms up for at least ``warmup`` rounds and
``warmup_s`` seconds, then times at least ``min_rounds`` rounds lasting at least ``min_time_s``
seconds; the cost of one round is estimated from the warm-up just run.

The default duration is 10 s, longer than trtexec's 3 s: the bench is a nightly gate that fails on
a 10 % median regression (``--benchmark-compare-fail=median:10%``), and GPU clocks and a shared
CPU's load drift over seconds. With it a re-run of the default table spends over 95 % of its wall
time in these loops rather than in start-up, probing the caches and writing the report.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from quantbench.errors import ConfigError

# A bound on the rounds a time target can ask for: with a sub-millisecond estimate a 5 s target
# would otherwise keep millions of samples in memory for no gain in precision.
MAX_ROUNDS = 100_000


@dataclass(frozen=True)
class TimingPlan:
    """Untimed: ``warmup`` rounds and ``warmup_s`` seconds; timed: ``min_rounds`` rounds and ``min_time_s`` seconds.

    ``min_time_s=0`` means round counts only (``warmup_s`` is then ignored too).
    """

    warmup: int = 10
    min_rounds: int = 20
    min_time_s: float = 10.0
    warmup_s: float = 0.2  # trtexec's --warmUp default: lets GPU clocks settle

    def __post_init__(self) -> None:
        for name, value, least in (("warmup", self.warmup, 0), ("min_rounds", self.min_rounds, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"timing {name}={value!r} is not a whole number >= {least}; pass e.g. 10.")
        for name, seconds in (("min_time_s", self.min_time_s), ("warmup_s", self.warmup_s)):
            if (isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds)
                    or seconds < 0):
                raise ConfigError(f"timing {name}={seconds!r} is not a number of seconds >= 0; pass e.g. 5.")

    def rounds_for(self, round_ms: float) -> int:
        """Timed rounds that meet both targets when one round takes ``round_ms`` milliseconds."""
        if self.min_time_s == 0 or round_ms <= 0:
            return self.min_rounds
        return max(self.min_rounds, min(MAX_ROUNDS, math.ceil(self.min_time_s * 1e3 / round_ms)))


def warm_up(run_once: Callable[[], object], plan: TimingPlan, *,
            clock: Callable[[], float] = time.perf_counter) -> int:
    """Run the plan's warm-up and return how many timed rounds meet it.

    A time target needs an estimate, so at least one untimed round runs even with ``warmup=0``.
    The estimate is the median of the later half of the warm-up: the first rounds pay for cold
    caches, lazy allocations and clock ramp-up.
    """
    timed = plan.min_time_s > 0
    least_rounds = max(1, plan.warmup) if timed else plan.warmup
    least_ms = plan.warmup_s * 1e3 if timed else 0.0
    samples: list[float] = []
    while len(samples) < least_rounds or sum(samples) < least_ms:
        started = clock()
        run_once()
        samples.append((clock() - started) * 1e3)
    if not samples:
        return plan.min_rounds
    return plan.rounds_for(statistics.median(samples[len(samples) // 2:]))


def rounds_for_loop(run_rounds: Callable[[int], object], plan: TimingPlan, *,
                    clock: Callable[[], float] = time.perf_counter) -> int:
    """Rounds that meet the plan for a loop that runs ``n`` rounds per call (`Runner.time`).

    A runner's own timing loop may cost a round differently from a plain inference (pinned
    buffers, a replayed CUDA graph: measured 0.25 ms against 1.2 ms for the same 1-image batch
    on an H100), so its rounds are estimated on itself: one call of ``min_rounds`` rounds.
    """
    if plan.min_time_s == 0:
        return plan.min_rounds
    started = clock()
    run_rounds(plan.min_rounds)
    return plan.rounds_for((clock() - started) * 1e3 / plan.min_rounds)


def host_rounds(run_once: Callable[[], object], rounds: int, *,
                clock: Callable[[], float] = time.perf_counter) -> tuple[float, ...]:
    """``rounds`` timed calls of ``run_once``, in ms each: the host clock around one synchronised
    inference, as pytest-benchmark times a round (for timings taken outside a benchmark test)."""
    samples = []
    for _ in range(rounds):
        started = clock()
        run_once()
        samples.append((clock() - started) * 1e3)
    return tuple(samples)
