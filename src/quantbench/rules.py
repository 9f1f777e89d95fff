"""The small rules every layer shares, defined once so that their copies cannot drift.

- the float tolerance of every limit check (`TOLERANCE`, `within`): measurements are floats
  (0.2427 - 0.2327 = 0.010000000000000009), so a value equal to its limit up to rounding noise is
  within it; one constant, so that no step is "over budget" by one check and "pass" by another;
- number checks for values already parsed (dataclass fields, TOML values, keyword arguments):
  `is_number`, `is_count`, `is_confidence` and their raising forms `check_number`, `check_count`,
  `check_counts`, `check_confidence`; each raises the given
  `QuantbenchError` subclass with one sentence naming the value and the fix;
- "did you mean" suggestions (`closest`);
- installed tool versions, read from package metadata without importing the tool (`tool_version`);
- figures drawn with matplotlib's object API and the Agg canvas, never pyplot's global state
  (`new_figure`, `png_bytes`).

Imports only `quantbench.errors` (matplotlib inside the functions that draw).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import io
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from quantbench.errors import ConfigError, QuantbenchError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TOLERANCE = 1e-9  # absolute: scores are fractions (0.010 = 1 mAP point), so 1e-9 is far below any difference that matters


def within(value: float, limit: float) -> bool:
    """``value <= limit`` up to float rounding noise (`TOLERANCE`)."""
    return value <= limit + TOLERANCE


# --- numbers ---------------------------------------------------------------------------------


def is_number(value: object) -> bool:
    """A finite int or float that is not a bool (``True`` is an int to Python, never a number here)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_count(value: object, minimum: int = 1) -> bool:
    """An int (not a bool) of at least ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_number(value: object, name: str, *, low: float | None = None, high: float | None = None, fix: str,
                 error: type[QuantbenchError] = ConfigError) -> float:
    """``value`` as a float when it is a finite number from ``low`` to ``high`` (either may be None);
    else ``error("<name>=<value> is not <range>; <fix>.")``."""
    number = float(value) if is_number(value) else math.nan  # type: ignore[arg-type]
    if math.isnan(number) or (low is not None and number < low) or (high is not None and number > high):
        raise error(f"{name}={value!r} is not {_range_words(low, high)}; {fix.rstrip('.')}.")
    return number


def _range_words(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"a number from {low:g} to {high:g}"
    if low is not None:
        return f"a number >= {low:g}"
    return "a finite number" if high is None else f"a number <= {high:g}"


def is_confidence(value: object) -> bool:
    """A confidence level of an interval: from 0.5 (a coin toss) to below 1 (an interval of everything)."""
    return is_number(value) and 0.5 <= value < 1.0  # type: ignore[operator]


def check_confidence(value: object, name: str, *, error: type[QuantbenchError] = ConfigError) -> float:
    """``value`` as a float when `is_confidence`; else ``error`` naming it and the fix."""
    if not is_confidence(value):
        raise error(f"{name}={value!r} is not a level from 0.5 to below 1; pass e.g. 0.95.")
    return float(value)  # type: ignore[arg-type]


def check_count(value: object, name: str, *, minimum: int = 1, fix: str,
                error: type[QuantbenchError] = ConfigError) -> int:
    """``value`` when it is a whole number of at least ``minimum``; else ``error`` naming it and ``fix``."""
    if not is_count(value, minimum):
        kind = {1: "a positive whole number", 0: "a non-negative whole number"}.get(
            minimum, f"a whole number >= {minimum}")
        raise error(f"{name}={value!r} is not {kind}; {fix.rstrip('.')}.")
    return value  # type: ignore[return-value]


def check_counts(config: Any, minimums: dict[str, int]) -> None:
    """Refuse a dataclass whose named fields are not whole numbers of at least their minimum.

    For ``__post_init__``: the `ConfigError` names the field, the value and, as the example, the
    field's default.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    for name, minimum in minimums.items():
        check_count(getattr(config, name), name, minimum=minimum, fix=f"pass e.g. {defaults[name]}")


# --- words -----------------------------------------------------------------------------------


def closest(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The choice ``word`` was most likely meant to be (a typo's fix), or None when none is close."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return match[0] if match else None


# --- tools -----------------------------------------------------------------------------------


def tool_version(*distributions: str) -> str | None:
    """Version of the first installed distribution among ``distributions`` (``"onnxruntime-gpu",
    "onnxruntime"``), read from package metadata (nothing imported); None when none is installed or
    its metadata is broken: a missing fact is recorded as unknown, never as an error."""
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        except Exception:  # broken metadata must not fail a measurement
            return None
    return None


# --- figures ---------------------------------------------------------------------------------


def new_figure(width: float, height: float, *, constrained: bool = True) -> Figure:
    """A matplotlib ``Figure`` on its own Agg canvas: no pyplot, no global backend, no display, and
    nothing left open when it is dropped (library calls must not change the caller's matplotlib)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (written atomically by the caller)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
