"""`thresholds.toml`: the pass/fail criteria of the bench, validated before any work starts.

File layout (every key optional; see the commented `thresholds.toml` at the repository root)::

    baseline = "fp16"            # variant every other variant is compared with
    max_abs_drop = 0.010         # mAP50-95 drop as a fraction (0.010 = 1.0 point)
    max_rel_drop = 0.03          # mAP50-95 drop relative to the baseline's (0.03 = 3 %)
    min_map = 0.30               # floor for the baseline's own mAP50-95 (catches a broken pipeline)
    max_memory_increase = 0.10   # peak GPU memory vs the baseline (0.10 = +10 %)
    not_gated = ["int8-all"]     # exploratory variants: reported, never red, never the winner
    verdicts = "interval"        # or "point": see `quantbench.decision.gate`
    confidence = 0.95            # of the intervals of the mAP drop and of the speed-up
    [min_speedup]                # backend -> minimum speed-up vs the baseline
    tensorrt = 1.2
    [model.yolo11n]              # per-model overrides, inheriting everything above
    min_speedup = { tensorrt = 1.33 }

Model tables: `<name>` is the model's name as quantbench gives it (the file stem: yolo11n,
yolov5n-coco). A table spelled like a model of the run up to case and ``-``/``_``/``.`` is a typo
and stops the run (`Thresholds.check_models`); other tables that match no model of the run are
meant for other runs and get a start-up warning.

Inheritance: a `[model.<name>]` table starts from the top-level values; its scalars replace
them, its `min_speedup` entries are merged backend by backend, its `not_gated` list replaces the
top-level list.

Which drop counts: a variant passes the accuracy gate only when BOTH its absolute and its relative
mAP50-95 drops are within their limits (the absolute limit protects strong models, the relative
one weak models). The baseline itself is gated only by `min_map`. Speed-ups and memory are
checked only where a threshold is set and the measurement exists.

The rules that apply these criteria to measurements (point and interval) are the gate's
(`quantbench.decision.gate`), the only place that decides pass or fail.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from quantbench.backends.base import BackendKind
from quantbench.errors import ConfigError
from quantbench.rules import closest, is_confidence, is_number


@dataclass(frozen=True)
class ModelThresholds:
    """The criteria for one model; the defaults are the user's stated success criteria."""

    baseline: str = "fp16"
    max_abs_drop: float = 0.010
    max_rel_drop: float = 0.03
    min_map: float | None = None
    min_speedup: dict[str, float] = field(default_factory=dict)
    not_gated: tuple[str, ...] = ()
    max_memory_increase: float | None = None
    # How a verdict is reached: "interval" (pass or fail only when the whole confidence interval of the
    # mAP drop, and of the speed-up where a minimum is set, is on one side of the limit; inconclusive
    # otherwise) or "point" (the point estimates alone, as quantbench did before intervals).
    verdicts: str = "interval"
    confidence: float = 0.95  # of those intervals

    def is_gated(self, variant: str) -> bool:
        return variant not in self.not_gated


_KEYS = tuple(f.name for f in fields(ModelThresholds))
VERDICT_MODES = ("interval", "point")
_TOP_LEVEL_KEYS = (*_KEYS, "model")
_BACKENDS = tuple(k.value for k in BackendKind)


# Up to this many unmatched [model.X] tables get a warning each; more are summarised in one.
_WARNED_TABLES = 5


@dataclass(frozen=True)
class Thresholds:
    """The top-level criteria plus per-model overrides, as read from one file."""

    default: ModelThresholds
    per_model: dict[str, ModelThresholds]
    source: Path | None

    @classmethod
    def load(cls, path: Path) -> Thresholds:
        """Read and validate ``path``; ConfigError naming the file and the key on any bad entry."""
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(
                f"thresholds file {path} does not exist; pass an existing file "
                "(the repository's thresholds.toml shows every key)."
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"thresholds file {path} cannot be read ({exc}); check its permissions and encoding."
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML ({exc}); fix the syntax there.") from None
        return cls.from_mapping(raw, source=path)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], *, source: Path | None = None) -> Thresholds:
        """Validate an already parsed table (``load`` without the file)."""
        where = str(source) if source else "thresholds"
        _reject_unknown(raw, _TOP_LEVEL_KEYS, where, "the top level")
        top = {k: v for k, v in raw.items() if k != "model"}
        default = _parse_model_table(top, ModelThresholds(), where, "")
        models = raw.get("model", {})
        if not isinstance(models, dict):
            raise ConfigError(
                f"{where}: 'model' must be tables like [model.yolo11n], not {type(models).__name__}; "
                "write one [model.<name>] table per model."
            )
        per_model = {}
        for name, table in models.items():
            if not isinstance(table, dict):
                raise ConfigError(
                    f"{where}: model.{name} must be a table ([model.{name}]) of threshold keys, "
                    f"not {type(table).__name__}."
                )
            per_model[name] = _parse_model_table(table, default, where, f"model.{name}.")
        return cls(default=default, per_model=per_model, source=source)

    def for_model(self, model: str) -> ModelThresholds:
        """The criteria for ``model``: its own table where there is one, else the top level."""
        return self.per_model.get(model, self.default)

    def check_models(self, model_names: Iterable[str]) -> list[str]:
        """Warnings for ``[model.X]`` tables that apply to no model of this run; ConfigError for a typo.

        A table whose name equals a model of the run up to case and the separators ``-``, ``_``,
        ``.`` (``[model.yolov5n_coco]`` for ``yolov5n-coco``) was meant for it and would silently be
        ignored: an error naming the model. Any other unmatched table is taken to be meant for other
        runs (one file serves yolo11n and yolo11s runs): a warning that names the models of this run.
        """
        names = tuple(dict.fromkeys(model_names))
        where = str(self.source) if self.source else "thresholds"
        by_spelling = {_spelling(n): n for n in names}
        unmatched = []
        for table in self.per_model:
            if table in names:
                continue
            meant = by_spelling.get(_spelling(table))
            if meant is not None:
                raise ConfigError(
                    f"{where}: [model.{table}] matches no model of this run but is spelled like model {meant!r}, "
                    f"so it would be ignored; rename it to [model.{meant}]."
                )
            unmatched.append(table)
        if len(unmatched) > _WARNED_TABLES:  # one line, not one per table (a file may hold thousands)
            shown = ", ".join(f"[model.{t}]" for t in unmatched[:_WARNED_TABLES])
            return [f"{where}: {len(unmatched)} [model.*] tables apply to no model of this run ({', '.join(names)}), "
                    f"e.g. {shown}; their thresholds are ignored here (tables for other runs are fine; check the "
                    "names if not)."]
        return [f"{where}: [model.{table}] applies to no model of this run ({', '.join(names)}); "
                "its thresholds are ignored here (a table for other runs is fine; check the name if not)."
                for table in unmatched]

    def validate_variants(self, variant_names: Iterable[str]) -> None:
        """ConfigError when a baseline or a not_gated entry names no variant in ``variant_names``."""
        names = tuple(variant_names)
        where = str(self.source) if self.source else "thresholds"
        tables = [("", self.default), *((f"model.{m}.", t) for m, t in self.per_model.items())]
        for prefix, t in tables:
            if t.baseline not in names:
                raise ConfigError(
                    f"{where}: {prefix}baseline = {t.baseline!r} is not a variant in the variants table"
                    f"{_suggest(t.baseline, names)}; choose one of {', '.join(names) or '(none)'}."
                )
            for name in t.not_gated:
                if name not in names:
                    raise ConfigError(
                        f"{where}: {prefix}not_gated lists {name!r}, which is not a variant in the variants "
                        f"table{_suggest(name, names)}; choose from {', '.join(names) or '(none)'}."
                    )


# --- parsing ---------------------------------------------------------------------------------


def _parse_model_table(table: Mapping[str, Any], base: ModelThresholds, where: str, prefix: str) -> ModelThresholds:
    _reject_unknown(table, _KEYS, where, f"[{prefix.rstrip('.')}]" if prefix else "the top level")
    changes: dict[str, Any] = {}
    if "baseline" in table:
        value = table["baseline"]
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}: {prefix}baseline = {value!r} must be a variant name such as \"fp16\".")
        changes["baseline"] = value
    for key in ("max_abs_drop", "max_rel_drop", "min_map", "max_memory_increase"):
        if key in table:
            changes[key] = _fraction(table[key], where, prefix + key)
    if "verdicts" in table:
        if table["verdicts"] not in VERDICT_MODES:
            raise ConfigError(f"{where}: {prefix}verdicts = {table['verdicts']!r} must be one of "
                              f"{', '.join(map(repr, VERDICT_MODES))}.")
        changes["verdicts"] = table["verdicts"]
    if "confidence" in table:
        value = table["confidence"]
        if not is_confidence(value):
            raise ConfigError(f"{where}: {prefix}confidence = {value!r} must be a level from 0.5 to below 1, "
                              "e.g. 0.95.")
        changes["confidence"] = float(value)
    if "min_speedup" in table:
        changes["min_speedup"] = {**base.min_speedup, **_speedups(table["min_speedup"], where, prefix)}
    if "not_gated" in table:
        value = table["not_gated"]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(
                f"{where}: {prefix}not_gated = {value!r} must be a list of variant names, e.g. [\"int8-all\"]."
            )
        changes["not_gated"] = tuple(value)
    result = replace(base, **changes)
    if result.baseline in result.not_gated:
        raise ConfigError(
            f"{where}: {prefix}not_gated lists the baseline {result.baseline!r}; "
            "the baseline is always reported and gated only by min_map, so remove it from not_gated."
        )
    return result


def _spelling(name: str) -> str:
    """A model name with case and separators ignored: what a typo in a table name usually keeps."""
    return re.sub(r"[-_.\s]+", "-", name.casefold())


def _fraction(value: Any, where: str, key: str) -> float:
    if not is_number(value):
        raise ConfigError(f"{where}: {key} = {value!r} must be a number (a fraction: 0.01 = 1 %).")
    if not 0.0 <= value <= 1.0:
        raise ConfigError(
            f"{where}: {key} = {value!r} is impossible; give a fraction between 0 and 1 (0.01 = 1 %)."
        )
    return float(value)


def _speedups(value: Any, where: str, prefix: str) -> dict[str, float]:
    key = prefix + "min_speedup"
    if not isinstance(value, dict):
        raise ConfigError(
            f"{where}: {key} = {value!r} must be a table of backend = factor, e.g. {{ tensorrt = 1.33 }}."
        )
    _reject_unknown(value, _BACKENDS, where, key)
    out = {}
    for backend, factor in value.items():
        if not (is_number(factor) and factor > 0):
            raise ConfigError(
                f"{where}: {key}.{backend} = {factor!r} is impossible; give a speed-up factor above 0 "
                "(1.33 = 33 % faster than the baseline)."
            )
        out[backend] = float(factor)
    return out


def _reject_unknown(table: Mapping[str, Any], allowed: tuple[str, ...], where: str, section: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(
                f"{where}: unknown key {key!r} in {section}{_suggest(key, allowed)}; "
                f"allowed keys are {', '.join(allowed)}."
            )


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = closest(word, choices)
    return f" (did you mean {close!r}?)" if close else ""
