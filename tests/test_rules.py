"""rules.py: the shared tolerance, number checks, suggestions, tool versions and figures."""

from __future__ import annotations

import importlib.metadata
import math
from dataclasses import dataclass

import pytest

from quantbench.errors import ConfigError, DataError
from quantbench.rules import (
    TOLERANCE,
    check_confidence,
    check_count,
    check_counts,
    check_number,
    closest,
    is_confidence,
    is_count,
    is_number,
    new_figure,
    png_bytes,
    tool_version,
    within,
)


def test_within_forgives_float_noise_and_nothing_more():
    drop = 0.2427 - 0.2327
    assert drop > 0.010 and within(drop, 0.010)  # 0.010000000000000009: the limit, up to rounding
    assert not within(0.010 + 10 * TOLERANCE, 0.010)
    assert within(-1.0, 0.0) and not within(math.nan, 1.0)


@pytest.mark.parametrize("value", [0, 1, -2.5, 1e300])
def test_numbers(value):
    assert is_number(value)


@pytest.mark.parametrize("value", [True, False, math.nan, math.inf, -math.inf, "1", None])
def test_not_numbers(value):
    assert not is_number(value)


def test_counts_are_whole_non_bool_ints_of_a_minimum():
    assert is_count(1) and is_count(0, minimum=0) and is_count(64, minimum=32)
    assert not any(is_count(v) for v in (0, True, 1.0, "3", None))
    assert not is_count(31, minimum=32)


def test_check_number_names_value_range_and_fix_with_the_given_error():
    assert check_number(1, "share", low=0, high=1, fix="pass e.g. 0.85") == 1.0
    with pytest.raises(ConfigError, match=r"^share=85 is not a number from 0 to 1; pass e.g. 0.85\.$"):
        check_number(85, "share", low=0, high=1, fix="pass e.g. 0.85.")
    with pytest.raises(DataError, match=r"^x=nan is not a number >= 0; "):
        check_number(math.nan, "x", low=0, fix="pass a finite value", error=DataError)
    with pytest.raises(ConfigError, match=r"^x=True is not a finite number; "):
        check_number(True, "x", fix="pass a number")


def test_check_count_and_check_counts_name_the_field_and_its_default():
    assert check_count(3, "rounds", fix="pass e.g. 20") == 3
    with pytest.raises(ConfigError, match=r"^rounds=0 is not a positive whole number; pass e.g. 20\.$"):
        check_count(0, "rounds", fix="pass e.g. 20")
    with pytest.raises(ConfigError, match=r"^seed=-1 is not a non-negative whole number"):
        check_count(-1, "seed", minimum=0, fix="pass e.g. 0")
    with pytest.raises(ConfigError, match=r"^resamples=1 is not a whole number >= 2"):
        check_count(1, "resamples", minimum=2, fix="pass e.g. 1000")

    @dataclass(frozen=True)
    class Knobs:
        steps: int = 40
        verify: int = 3

    check_counts(Knobs(), {"steps": 1, "verify": 0})
    with pytest.raises(ConfigError, match=r"^steps=2.5 is not a positive whole number; pass e.g. 40\.$"):
        check_counts(Knobs(steps=2.5), {"steps": 1, "verify": 0})  # type: ignore[arg-type]


def test_confidence_levels_run_from_one_half_to_below_one():
    assert is_confidence(0.5) and is_confidence(0.999) and not is_confidence(1.0) and not is_confidence(95)
    assert check_confidence(0.9, "confidence") == 0.9
    with pytest.raises(ConfigError, match=r"^confidence=1.0 is not a level from 0.5 to below 1; pass e.g. 0.95\.$"):
        check_confidence(1.0, "confidence")


def test_closest_suggests_only_near_spellings():
    assert closest("max_abs_drp", ("max_abs_drop", "max_rel_drop", "baseline")) == "max_abs_drop"
    assert closest("zzz", ("max_abs_drop", "baseline")) is None
    assert closest("anything", ()) is None


def test_tool_version_reads_the_first_installed_distribution():
    assert tool_version("no-such-distribution-xyz", "numpy") == importlib.metadata.version("numpy")
    assert tool_version("no-such-distribution-xyz") is None
    assert tool_version() is None


def test_figures_draw_without_pyplot():
    fig = new_figure(3, 2)
    fig.subplots().plot([0, 1], [1, 0])
    data = png_bytes(fig, dpi=50)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert fig.canvas.manager is None  # no pyplot figure manager: nothing global to close
