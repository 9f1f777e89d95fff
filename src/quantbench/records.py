"""Typed, frozen, versioned result records with one JSON shape.

Every stage's result that leaves a process (a CLI JSON, pytest-benchmark's ``extra_info``, the
report, the selection) is one of these records. ``to_dict`` / ``from_dict`` are the only
(de)serialisers; ``from_dict`` rejects unknown schema versions and unknown keys so a stale or
hand-edited file fails loudly instead of being half-read.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from quantbench.errors import QuantbenchError

SCHEMA_VERSION = 1

R = TypeVar("R")


class RecordError(QuantbenchError):
    """A serialised record does not match the schema this version of quantbench reads."""


def to_dict(record: Any) -> Any:
    """Plain JSON-able structure of a record (nested records, tuples and dicts included)."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return {f.name: to_dict(getattr(record, f.name)) for f in dataclasses.fields(record)}
    if isinstance(record, (list, tuple)):
        return [to_dict(v) for v in record]
    if isinstance(record, dict):
        return {str(k): to_dict(v) for k, v in record.items()}
    return record


def from_dict(cls: type[R], data: Any, *, where: str = "record") -> R:
    """Rebuild ``cls`` from ``to_dict`` output; unknown keys or a foreign schema version raise."""
    if not isinstance(data, dict):
        raise RecordError(f"{where}: expected a JSON object for {cls.__name__}, got {type(data).__name__}.")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise RecordError(f"{where}: unknown keys {unknown} for {cls.__name__}; is it from another quantbench version?")
    if "schema" in names and data.get("schema") != SCHEMA_VERSION:
        raise RecordError(
            f"{where}: schema version {data.get('schema')!r} is not {SCHEMA_VERSION}; "
            "re-run the benchmark with this quantbench version."
        )
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in data:
            kwargs[f.name] = _convert(hints[f.name], data[f.name], f"{where}.{f.name}")
    try:
        record = cls(**kwargs)
    except TypeError as exc:
        raise RecordError(f"{where}: {exc}") from None
    _check_ranges(record, where)
    return record


def _convert(tp: Any, value: Any, where: str) -> Any:
    """``value`` as type ``tp``, checked as strictly as the writers produce it (a hand-edited or
    corrupted file fails here, naming the key, not later as a TypeError in the selection)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where) if len(inner) == 1 else value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where=where)  # type: ignore[arg-type]
    if origin is tuple:
        _require(isinstance(value, (list, tuple)), where, value, "a list")
        item = args[0] if args else Any
        return tuple(_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        _require(isinstance(value, dict), where, value, "a JSON object")
        vt = args[1] if len(args) == 2 else Any
        return {k: _convert(vt, v, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        _require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
                 where, value, "a finite number")
        return float(value)
    if tp in (int, str, bool):
        _require(isinstance(value, tp) and (tp is bool or not isinstance(value, bool)), where, value,
                 {int: "an integer", str: "a string", bool: "true or false"}[tp])
    return value


def _require(ok: bool, where: str, value: Any, expected: str) -> None:
    if not ok:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise RecordError(f"{where} is {shown}, not {expected}; restore the file quantbench wrote or re-run the "
                          "benchmark.")


def _check_ranges(record: Any, where: str) -> None:
    """The ranges writers produce: mAPs are COCO's [0, 1] (or -1, COCO's "no such objects"),
    times, rates and counts are not negative."""
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if isinstance(record, CocoMetrics):
            values = value.items() if isinstance(value, dict) else [(None, value)]
            for name, v in values:
                if not (v == -1 or 0 <= v <= 1):
                    key = f"{where}.{f.name}" + (f".{name}" if name is not None else "")
                    raise RecordError(f"{key} is {v!r}, outside COCO's 0..1 (or -1 for no objects); restore the "
                                      "file quantbench wrote or re-run the evaluation.")
        elif (isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0
              and f.name.endswith(_NON_NEGATIVE)):
            raise RecordError(f"{where}.{f.name} is {value!r}, a negative {f.name.replace('_', ' ')}; restore the "
                              "file quantbench wrote or re-run the benchmark.")


# Fields (by name ending) that count or time something: never negative.
_NON_NEGATIVE = ("_ms", "_s", "num_images", "rounds", "batch_size", "_bytes", "images", "count", "resamples")


@dataclass(frozen=True)
class CocoMetrics:
    """pycocotools' summary, plus per-class AP50-95 keyed by class name."""

    map50_95: float
    map50: float
    map75: float
    map_small: float
    map_medium: float
    map_large: float
    ar100: float
    per_class_ap: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalTiming:
    """Where an evaluation's wall time went, in seconds."""

    inference_s: float  # backend.infer calls only
    total_s: float  # everything: decode, letterbox, inference, NMS, pycocotools
    images_per_s: float


@dataclass(frozen=True)
class EvalResult:
    """The accuracy of one (model, variant, backend) on one dataset."""

    model: str
    variant: str
    backend: str
    device: str
    dataset: str
    num_images: int
    skipped_images: tuple[str, ...]
    untrained: bool  # built from a .yaml: random weights, its mAP means nothing
    metrics: CocoMetrics
    timing: EvalTiming
    schema: int = SCHEMA_VERSION
    simulated: str | None = None  # why this is no measurement on the named backend (a test fake), else None
    # skipped images counted by reason (`quantbench.data.preprocess.UNREADABLE`, `SIZE_MISMATCH`);
    # records written before it existed read back with {}
    skip_reasons: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class BootstrapInterval:
    """A statistic on the full sample and its bootstrap interval (`quantbench.decision.uncertainty`)."""

    point: float  # on the full sample (not the resamples' mean)
    lower: float
    upper: float
    confidence: float  # e.g. 0.95
    resamples: int
    images: int  # the sample size the interval is for (images; for latency, the fewer rounds)
    method: str = "percentile"

    def excludes(self, value: float) -> bool:
        return value < self.lower or value > self.upper


@dataclass(frozen=True)
class DropInterval:
    """mAP drops of a variant from its baseline (baseline - variant: positive = variant worse)."""

    map50_95: BootstrapInterval
    map50: BootstrapInterval
    map50_95_relative: BootstrapInterval | None  # drop / baseline mAP50-95; None when that is not positive


@dataclass(frozen=True)
class AccuracyComparison:
    """A variant's mAP drop from its baseline, both scored on the same images: the paired bootstrap."""

    model: str
    variant: str
    baseline: str
    backend: str
    dataset: str
    num_images: int
    drop: DropInterval
    seed: int = 0  # of the resampling
    schema: int = SCHEMA_VERSION


@dataclass(frozen=True)
class SeedSpread:
    """mAPs of one variant built from K seeded calibration subsets: how much the seed alone moves it."""

    mean: float
    min: float
    max: float
    stdev: float  # sample standard deviation (K - 1 in the denominator)
    count: int  # K

    @property
    def range(self) -> float:
        return self.max - self.min


@dataclass(frozen=True)
class CalibrationSpread:
    """One variant built from several seeded calibration subsets and evaluated on the same images."""

    model: str
    variant: str
    backend: str
    dataset: str
    num_images: int
    calib_images: int
    seeds: tuple[int, ...]
    maps: tuple[float, ...]  # mAP50-95 per seed, in ``seeds`` order
    spread: SeedSpread
    schema: int = SCHEMA_VERSION


@dataclass(frozen=True)
class VariantBuild:
    """What building one variant ONNX produced, and how."""

    model: str
    variant: str
    kind: str  # fp32 | fp16 | int8
    onnx_path: str
    onnx_sha256: str
    base_sha256: str
    options: dict[str, Any]
    quantized_nodes: int  # nodes whose inputs pass through Q/DQ (0 for fp32/fp16)
    excluded_nodes: tuple[str, ...]  # nodes kept out of INT8 on purpose
    seconds: float  # build time when built; the original build's time when cached
    cached: bool  # True when this call found it in the cache
    modelopt_version: str
    schema: int = SCHEMA_VERSION


@dataclass(frozen=True)
class LatencyStats:
    """One timed configuration, in milliseconds per batch: the summary and the raw rounds it summarises.

    ``samples_ms`` keeps every timed round (as pyperf and torch.utils.benchmark keep raw values) so that
    later statistics (bootstrap intervals, outlier checks) need no re-run; records written before it
    existed read back with ``()``.
    """

    median_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    stddev_ms: float
    rounds: int
    samples_ms: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.samples_ms and len(self.samples_ms) != self.rounds:
            raise RecordError(f"LatencyStats has {len(self.samples_ms)} samples for {self.rounds} rounds; "
                              "keep every timed round or none.")

    @classmethod
    def from_samples(cls, samples_ms: typing.Sequence[float]) -> LatencyStats:
        """Summary of raw per-batch samples (pytest-benchmark's rounds or `Runner.time`'s)."""
        if not samples_ms:
            raise ValueError("no latency samples to summarise")
        return cls(
            median_ms=statistics.median(samples_ms),
            mean_ms=statistics.fmean(samples_ms),
            min_ms=min(samples_ms),
            max_ms=max(samples_ms),
            stddev_ms=statistics.stdev(samples_ms) if len(samples_ms) > 1 else 0.0,
            rounds=len(samples_ms),
            samples_ms=tuple(float(x) for x in samples_ms),
        )


@dataclass(frozen=True)
class Provenance:
    """What a measurement ran on and with, gathered by `provenance.collect_provenance` (None: unknown).

    Latency moves with these (INT8's speed-up over FP16 has been reported to change with the
    TensorRT version on one GPU), so `quantbench history` marks where any of them changed.
    """

    quantbench: str | None = None
    commit: str | None = None  # git HEAD of the checkout that ran the bench
    commit_dirty: bool | None = None  # uncommitted changes in that checkout
    python: str | None = None
    onnxruntime: str | None = None
    modelopt: str | None = None
    tensorrt: str | None = None  # the TensorRT that built and ran the engines; None when another backend ran
    gpu: str | None = None
    compute_capability: str | None = None  # "9.0"
    driver: str | None = None  # NVIDIA driver version ("580.65.06")
    cpu: str | None = None
    # ONNX Runtime's execution-provider options as the session applied them ({provider: {key: value}}), None for others
    provider_options: dict[str, Any] | None = None


@dataclass(frozen=True)
class LatencyResult:
    """The speed of one (model, variant, backend, batch size)."""

    model: str
    variant: str
    backend: str
    device: str
    batch_size: int
    host: LatencyStats  # synchronised call, host wall clock (what pytest-benchmark times)
    images_per_s: float
    device_ms: float | None = None  # GPU time per batch from CUDA events
    h2d_ms: float | None = None
    d2h_ms: float | None = None
    engine_memory_bytes: int | None = None
    peak_memory_bytes: int | None = None
    precision: dict[str, Any] | None = None  # TensorRT per-layer precision summary
    provenance: Provenance | None = None  # versions, GPU, driver, commit (None in records written before it existed)
    schema: int = SCHEMA_VERSION
    simulated: str | None = None  # why these figures are no measurement on the named backend (a test fake), else None
