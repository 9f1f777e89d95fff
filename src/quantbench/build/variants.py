"""The declarative variant table (``bench/variants.toml``): which builds of a model to compare.

A variant is a frozen ``Variant``: a name, a kind (``fp32`` reference, ``fp16`` through ModelOpt
AutoCast, ``int8`` Q/DQ through ModelOpt PTQ) and the ModelOpt options that shape it. The table
is validated as a whole before any work starts: unknown keys (with the closest known key as a
suggestion), keys that do not apply to a kind, unknown kinds, calibration methods and passes, op
types that are not ONNX operators, node patterns that are not regular expressions, and duplicate
names all raise one ``ConfigError`` sentence naming the file, the variant and the key.

`variant_toml` writes one table back (what `quantbench search` emits); `load_variants` reads it
as the same `Variant`.

File layout: one ``[[variant]]`` table per variant, in the order they are reported::

    [[variant]]
    name = "int8-entropy"            # required; letters, digits, '.', '_' and '-' (a pytest id)
    kind = "int8"                    # required; fp32 | fp16 | int8
    calibration_method = "entropy"   # int8: max | entropy
    calib_images = 128               # fp16, int8: calibration images (fp16: AutoCast's range check)
    op_types_to_exclude = ["Concat"] # fp16, int8: ONNX op types kept out of the low precision
    op_types_to_quantize = ["Conv"]  # int8: only these op types get Q/DQ (ModelOpt's default set if omitted)
    nodes_to_exclude = ["/model\\.0/.*"]  # fp16, int8: node-name regexes kept out
    exclude_head = true              # fp16, int8: the detection head's output convs (+ DFL) kept out
    high_precision_dtype = "fp16"    # int8: precision of everything not in INT8 (fp32 | fp16 | bf16)
    calibrate_per_node = false       # int8: calibrate node by node (less memory, slower)
    calibration_eps = "cpu"          # int8: auto | trt | cuda | cpu; default: the run's (--qb-calibration-eps)
    passes = ["concat_elimination"]  # int8: ModelOpt passes; omit for ModelOpt's default
    gated = true                     # false: exploratory, reported but never the winner
    models = ["yolo11*"]             # only for these models: names or shell-style globs (node names are
                                     # model-specific); default: every model
    description = "..."              # free text for the report
"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any

from quantbench.errors import ConfigError
from quantbench.rules import closest, is_count

DEFAULT_VARIANTS = Path("bench/variants.toml")

CALIBRATION_METHODS = ("max", "entropy")  # ModelOpt's INT8 calibrators (ORT MinMax / Entropy)
CALIBRATION_EP_CHOICES = ("auto", "trt", "cuda", "cpu")  # `build.calibration_eps.CHOICES`
HIGH_PRECISION_DTYPES = ("fp32", "fp16", "bf16")
MODELOPT_PASSES = ("concat_elimination",)
VARIANT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Model names are file stems used in test ids, like variant names; `models` also takes shell-style globs.
MODEL_PATTERN_RE = re.compile(r"^[A-Za-z0-9*?\[][A-Za-z0-9._*?\[\]-]*$")


class VariantKind(str, Enum):
    FP32 = "fp32"  # the exported model itself: the reference
    FP16 = "fp16"  # ModelOpt AutoCast mixed precision
    INT8 = "int8"  # ModelOpt INT8 Q/DQ post-training quantization


@dataclass(frozen=True)
class Variant:
    """One build of a model: its kind and the ModelOpt options that shape it."""

    name: str
    kind: VariantKind
    calibration_method: str = "max"
    calib_images: int = 128
    calib_seed: int | None = None  # which calibration images (a seeded choice); None: the run's seed
    op_types_to_exclude: tuple[str, ...] = ()
    op_types_to_quantize: tuple[str, ...] = ()  # empty: ModelOpt's default set
    nodes_to_exclude: tuple[str, ...] = ()  # node-name regexes
    exclude_head: bool = False  # detection-head output convs (+ DFL) kept out of INT8
    high_precision_dtype: str = "fp16"
    calibrate_per_node: bool = False
    calibration_eps: str | None = None  # which EP calibrates; None: the run's choice
    passes: tuple[str, ...] | None = None  # None: ModelOpt's default passes
    gated: bool = True
    models: tuple[str, ...] = ()  # model names or globs it is meant for (empty: every model)
    description: str = ""

    @property
    def id(self) -> str:
        """Stable id; doubles as the pytest id."""
        return self.name

    @property
    def needs_calibration(self) -> bool:
        """INT8 needs calibration ranges; FP16 needs real images for AutoCast's overflow check."""
        return self.kind is not VariantKind.FP32

    def applies_to(self, model: str) -> bool:
        """Whether the variant is meant for ``model`` (a model name such as ``yolo11n-coco``)."""
        return not self.models or any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)

    def skip_reason(self, model: str) -> str | None:
        """Why ``model`` skips this variant (one sentence), or None when the variant applies to it."""
        if self.applies_to(model):
            return None
        return (f"variant {self.name!r} is meant for model{'s' if len(self.models) > 1 else ''} "
                f"{', '.join(self.models)} only (its 'models' key in the variant table); {model} skips it")

    def options(self) -> dict[str, Any]:
        """The options that determine the built ONNX (JSON-able): part of cache keys and reports.

        Only options that apply to the kind are listed, so that e.g. renaming a variant or editing
        its description never invalidates its cached build.
        """
        applicable = _KIND_OPTIONS[self.kind]
        out: dict[str, Any] = {"kind": self.kind.value}
        for key in applicable:
            value = getattr(self, key)
            if key in _OMIT_WHEN_EMPTY and not value:
                continue
            out[key] = list(value) if isinstance(value, tuple) else value
        return out


# Which build options each kind reads; anything else in its table is a mistake worth reporting.
_KIND_OPTIONS: dict[VariantKind, tuple[str, ...]] = {
    VariantKind.FP32: (),
    VariantKind.FP16: ("calib_images", "calib_seed", "op_types_to_exclude", "nodes_to_exclude", "exclude_head"),
    VariantKind.INT8: (
        "calibration_method", "calib_images", "calib_seed", "op_types_to_exclude", "op_types_to_quantize", "nodes_to_exclude",
        "exclude_head", "high_precision_dtype", "calibrate_per_node", "passes", "calibration_eps",
    ),
}
# Options added after the first release: left out of options() while unset, so that adding
# them kept every earlier cache key (and its ModelOpt build) valid.
_OMIT_WHEN_EMPTY = ("op_types_to_quantize", "calib_seed", "calibration_eps")
_COMMON_KEYS = ("name", "kind", "gated", "models", "description")
_ALL_KEYS = tuple(f.name for f in fields(Variant))


def _closest(word: str, choices: tuple[str, ...]) -> str:
    match = closest(word, choices)
    return f"did you mean {match!r}?" if match else f"known keys: {', '.join(choices)}."


class _TableReader:
    """Validates one ``[[variant]]`` table; every error names the file, the variant and the key."""

    def __init__(self, path: Path, index: int, table: dict[str, Any]):
        self.path, self.table = path, table
        name = table.get("name")
        self.label = f"variant {name!r}" if isinstance(name, str) else f"variant #{index + 1}"

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.path}: {self.label}, key {key!r}: {problem}")

    def string(self, key: str, choices: tuple[str, ...] | None = None) -> str:
        value = self.table[key]
        if not isinstance(value, str):
            raise self.fail(key, f"{value!r} is not a string; write it in quotes.")
        if choices is not None and value not in choices:
            raise self.fail(key, f"{value!r} is not one of {', '.join(choices)}; use one of those.")
        return value

    def boolean(self, key: str) -> bool:
        value = self.table[key]
        if not isinstance(value, bool):
            raise self.fail(key, f"{value!r} is not a boolean; write true or false.")
        return value

    def positive_int(self, key: str) -> int:
        value = self.table[key]
        if not is_count(value, 1):
            raise self.fail(key, f"{value!r} is not a positive whole number; write e.g. 128.")
        return value

    def seed(self, key: str) -> int:
        value = self.table[key]
        if not is_count(value, 0):
            raise self.fail(key, f"{value!r} is not a whole number >= 0; write e.g. 0.")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.table[key]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, f"{value!r} is not a list of strings; write e.g. [\"Concat\"].")
        return tuple(value)

    def model_names(self, key: str) -> tuple[str, ...]:
        names = self.strings(key)
        if not names:
            raise self.fail(key, "is empty; list the models it is for, e.g. [\"yolo11n-coco\"], or remove the key.")
        for name in names:
            if not MODEL_PATTERN_RE.match(name):
                raise self.fail(key, f"{name!r} is not a model name or glob (a model file's stem, e.g. yolo11n-coco, "
                                     "or yolo11*); fix it.")
        return names

    def op_types(self, key: str) -> tuple[str, ...]:
        import onnx.defs

        ops = self.strings(key)
        for op in ops:
            if not onnx.defs.has(op):
                known = sorted({schema.name for schema in onnx.defs.get_all_schemas()})
                hint = closest(op, known)
                fix = f"did you mean {hint!r}?" if hint else "use ONNX operator names such as Conv or Concat."
                raise self.fail(key, f"{op!r} is not an ONNX operator type; {fix}")
        return ops

    def regexes(self, key: str) -> tuple[str, ...]:
        patterns = self.strings(key)
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise self.fail(key, f"{pattern!r} is not a valid regular expression ({exc}); fix or escape it.") from None
        return patterns

    def passes(self, key: str) -> tuple[str, ...]:
        names = self.strings(key)
        for name in names:
            if name not in MODELOPT_PASSES:
                raise self.fail(key, f"{name!r} is not a ModelOpt pass; use one of {', '.join(MODELOPT_PASSES)} or [].")
        return names

    def variant(self) -> Variant:
        for key in self.table:
            if key not in _ALL_KEYS:
                raise self.fail(key, f"unknown key; {_closest(key, _ALL_KEYS)}")
        for required in ("name", "kind"):
            if required not in self.table:
                raise self.fail(required, "missing; every [[variant]] needs a name and a kind.")
        name = self.string("name")
        if not VARIANT_NAME_RE.match(name):
            raise self.fail("name", f"{name!r} may only hold letters, digits, '.', '_' and '-' (it is a test id); rename it.")
        kind = VariantKind(self.string("kind", tuple(k.value for k in VariantKind)))
        allowed = _COMMON_KEYS + _KIND_OPTIONS[kind]
        for key in self.table:
            if key not in allowed:
                raise self.fail(key, f"does not apply to kind {kind.value!r}; remove it or change the kind.")

        readers: dict[str, Callable[[str], Any]] = {
            "gated": self.boolean,
            "models": self.model_names,
            "description": self.string,
            "calibration_method": lambda k: self.string(k, CALIBRATION_METHODS),
            "calib_images": self.positive_int,
            "calib_seed": self.seed,
            "op_types_to_exclude": self.op_types,
            "op_types_to_quantize": self.op_types,
            "nodes_to_exclude": self.regexes,
            "exclude_head": self.boolean,
            "high_precision_dtype": lambda k: self.string(k, HIGH_PRECISION_DTYPES),
            "calibration_eps": lambda k: self.string(k, CALIBRATION_EP_CHOICES),
            "calibrate_per_node": self.boolean,
            "passes": self.passes,
        }
        values: dict[str, Any] = {key: readers[key](key) for key in self.table if key in readers}
        both = sorted(set(values.get("op_types_to_quantize", ())) & set(values.get("op_types_to_exclude", ())))
        if both:  # ModelOpt would silently let the exclusion win
            raise self.fail("op_types_to_exclude", f"{', '.join(both)} is also in op_types_to_quantize; "
                            "list each op type in one of the two.")
        return Variant(name=name, kind=kind, **values)


def load_variants(path: Path) -> tuple[Variant, ...]:
    """Read and validate a variant table; ``ConfigError`` on the first problem found."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"variant table {path} does not exist; pass an existing file (the default is {DEFAULT_VARIANTS})."
        ) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); fix the syntax at that line.") from None
    for key in raw:
        if key != "variant":
            raise ConfigError(
                f"{path}: top-level key {key!r} is unknown; {_closest(key, ('variant',))} "
                "(write one [[variant]] table per variant)."
            )
    tables = raw.get("variant", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{path}: 'variant' must be an array of tables; write each one as [[variant]].")
    if not tables:
        raise ConfigError(f"{path} defines no variants; add at least one [[variant]] table.")
    variants: list[Variant] = []
    seen: set[str] = set()
    for index, table in enumerate(tables):
        variant = _TableReader(path, index, table).variant()
        if variant.name in seen:
            raise ConfigError(
                f"{path}: variant {variant.name!r}, key 'name': the name is used twice; give each variant its own name."
            )
        seen.add(variant.name)
        variants.append(variant)
    return tuple(variants)


def variant_toml(variant: Variant) -> str:
    """One ``[[variant]]`` table for a variant table: `load_variants` reads it back as ``variant``.

    Keys at their default are left out (``None`` among them, which TOML cannot spell), as are build
    options that do not apply to the variant's kind (the reader would refuse them; they change nothing).
    """
    keys = (*_KIND_OPTIONS[variant.kind], "gated", "models", "description")
    lines = ["[[variant]]", f"name = {_toml_value(variant.name)}", f"kind = {_toml_value(variant.kind.value)}"]
    for f in fields(Variant):
        value = getattr(variant, f.name)
        if f.name not in keys or value is None or value == f.default:
            continue
        if isinstance(value, tuple) and value:
            lines += [f"{f.name} = [", *(f"  {_toml_value(v)}," for v in value), "]"]
        else:
            lines.append(f"{f.name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: object) -> str:
    """A TOML scalar or empty array: JSON's string escapes and numbers are valid TOML; booleans are lower case."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):  # only the empty one: `variant_toml` writes the others one item a line
        return "[]"
    if not isinstance(value, str | int | float):
        raise TypeError(f"variant value {value!r} has no TOML form here; variants hold strings, numbers, booleans")
    return json.dumps(value)


def check_baselines(variants: Iterable[Variant], baselines: Mapping[str, str], *, table: Path | str,
                    thresholds: Path | str) -> None:
    """ConfigError when a model's baseline is a variant its ``models`` key keeps off that model.

    ``baselines`` maps each model of the run to its baseline variant (``Thresholds.for_model(m).baseline``).
    Such a baseline is skipped on the model, so nothing would be compared with it, and the selection
    named it the winner of a run that never measured it (issue 22): refused before any work.
    """
    by_name = {v.name: v for v in variants}
    for model, baseline in baselines.items():
        variant = by_name.get(baseline)
        if variant is not None and not variant.applies_to(model):
            raise ConfigError(
                f"{thresholds} makes {baseline!r} the baseline of {model}, but {table} restricts {baseline!r} to "
                f"{', '.join(variant.models)} (its 'models' key); add {model} to its models or choose another "
                "baseline for it."
            )
