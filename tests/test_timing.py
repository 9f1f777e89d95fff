"""The timing plan: warm-up rounds, then a minimum count and a minimum duration of timed rounds."""

from __future__ import annotations

import pytest

from quantbench.errors import ConfigError
from quantbench.evaluation.timing import MAX_ROUNDS, TimingPlan, rounds_for_loop, warm_up


class SteppingClock:
    """A clock whose every inference takes the next duration of a script (seconds)."""

    def __init__(self, durations: list[float]):
        self.now, self.durations, self.calls = 0.0, list(durations), 0

    def __call__(self) -> float:
        return self.now

    def infer(self) -> None:
        self.now += self.durations[self.calls]
        self.calls += 1


def test_rounds_meet_both_the_count_and_the_duration():
    plan = TimingPlan(warmup=2, min_rounds=20, min_time_s=5.0, warmup_s=0)
    assert plan.rounds_for(50.0) == 100  # a 50 ms CPU inference: the 5 s decide
    assert plan.rounds_for(1000.0) == 20  # a 1 s inference: the count decides
    assert plan.rounds_for(0.001) == MAX_ROUNDS  # a bogus estimate cannot ask for millions
    assert TimingPlan(min_rounds=7, min_time_s=0).rounds_for(50.0) == 7  # 0 s: rounds only


def test_warm_up_estimates_from_its_later_rounds():
    # Two slow cold rounds, then 40 ms ones: the estimate ignores the cold start.
    clock = SteppingClock([0.5, 0.5, 0.04, 0.04])
    rounds = warm_up(clock.infer, TimingPlan(warmup=4, min_rounds=10, min_time_s=2.0, warmup_s=0), clock=clock)
    assert clock.calls == 4
    assert rounds == 50  # 2 s / 40 ms


def test_warm_up_lasts_its_seconds_too():
    # 1 ms rounds (a TensorRT engine): 10 rounds are 10 ms, the warm-up goes on to 200 ms.
    clock = SteppingClock([0.001] * 1000)
    rounds = warm_up(clock.infer, TimingPlan(warmup=10, min_rounds=20, min_time_s=10.0, warmup_s=0.2), clock=clock)
    assert clock.calls in (200, 201)  # float sums of 1 ms steps
    assert rounds == 10_000


def test_a_time_target_needs_one_round_even_without_warm_up():
    clock = SteppingClock([0.1])
    assert warm_up(clock.infer, TimingPlan(warmup=0, min_rounds=5, min_time_s=1.0, warmup_s=0), clock=clock) == 10
    assert clock.calls == 1
    clock = SteppingClock([])
    assert warm_up(clock.infer, TimingPlan(warmup=0, min_rounds=5, min_time_s=0, warmup_s=0.2), clock=clock) == 5
    assert clock.calls == 0  # rounds only: no untimed round was asked for


@pytest.mark.parametrize(("field", "value"), [("warmup", -1), ("min_rounds", 0), ("min_time_s", -1.0),
                                              ("min_time_s", float("nan")), ("min_rounds", 2.5),
                                              ("warmup_s", -0.1)])
def test_impossible_plans_are_refused_with_the_field_named(field: str, value):
    with pytest.raises(ConfigError, match=f"timing {field}="):
        TimingPlan(**{field: value})


def test_a_runners_own_loop_is_estimated_on_itself():
    clock = SteppingClock([0.5])  # one call of 20 rounds lasting 0.5 s: 25 ms a round
    calls = []

    def run_rounds(n: int) -> None:
        calls.append(n)
        clock.infer()

    assert rounds_for_loop(run_rounds, TimingPlan(min_rounds=20, min_time_s=2.0), clock=clock) == 80
    assert calls == [20]
    assert rounds_for_loop(run_rounds, TimingPlan(min_rounds=7, min_time_s=0), clock=clock) == 7
    assert calls == [20]  # rounds only: no probe
