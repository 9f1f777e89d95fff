"""quantbench's records read back from pytest-benchmark JSON files (``--benchmark-json``, storage files).

Each benchmark of the bench suite carries ``extra_info["quantbench"] = {"latency": ..., "eval": ... | None,
"variant_options": {...}}`` (records as `records.to_dict` writes them) beside pytest-benchmark's own
``params``; the file's top-level ``quantbench.failures`` lists the variants that failed or did not run.

Records are joined only where they describe one thing, as pyperf refuses to merge runs whose checked
metadata differ:

- a benchmark's records must agree with its ``params`` (model, variant, batch size) and with each other;
- the latencies of one (model, backend), across every benchmark of every file given, must come from one
  device: speed-ups between variants timed on different GPUs say nothing about the variants.

Either disagreement is a `ConfigError` of one sentence naming both places.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantbench.errors import ConfigError
from quantbench.records import AccuracyComparison, CalibrationSpread, EvalResult, LatencyResult, from_dict

# (model, variant) -> the options the variant was built with (and ``gated``).
VariantOptions = dict[tuple[str, str], dict]

_WRITTEN_BY = "pass the file that pytest --benchmark-json wrote for quantbench's bench suite."

# pytest-benchmark ``params`` of the bench suite -> (record field, how a param value reads as that field).
# The model parameter is the model's source; records name the model by its file stem (`export` does).
_PARAM_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "qb_model_source": ("model", lambda source: Path(str(source)).stem),
    "qb_variant_name": ("variant", str),
    "qb_batch_size": ("batch_size", int),
}


@dataclass(frozen=True)
class _Entry:
    """One benchmark's quantbench records, and where they were read."""

    where: str
    latency: LatencyResult | None
    eval: EvalResult | None
    variant_options: dict | None


def records_from_benchmark_json(paths: Sequence[Path]) -> tuple[list[EvalResult], list[LatencyResult], VariantOptions]:
    """EvalResults, LatencyResults and (model, variant) -> variant options carried by pytest-benchmark JSON files.

    Other keys of ``extra_info["quantbench"]`` are ignored so newer writers stay readable. Later files,
    and later benchmarks within a file, win for duplicate keys. Benchmarks without
    ``extra_info["quantbench"]`` are skipped; a file with none at all is an error, and so are the
    disagreements the module docstring lists.
    """
    if not paths:
        raise ConfigError(f"no benchmark JSON files given; {_WRITTEN_BY}")
    evals: dict[tuple, EvalResult] = {}
    lats: dict[tuple, LatencyResult] = {}
    options: VariantOptions = {}
    timed_on: dict[tuple[str, str], tuple[str, str]] = {}  # (model, backend) -> (device, where)
    for path in paths:
        for entry in _entries(Path(path)):
            if entry.latency is not None:
                r = entry.latency
                _check_device(timed_on, r, entry.where)
                lats[r.model, r.variant, r.backend, r.batch_size] = r
            if entry.eval is not None:
                e = entry.eval
                evals[e.model, e.variant, e.backend] = e
            record = entry.latency or entry.eval
            if entry.variant_options is not None and record is not None:
                options[record.model, record.variant] = entry.variant_options
    return list(evals.values()), list(lats.values()), options


def failures_from_benchmark_json(paths: Sequence[Path]) -> dict[tuple[str, str], str]:
    """(model, variant) -> reason for the variants a bench run names as failed or not run (its
    top-level ``quantbench.failures``); files written before it existed give none."""
    failures: dict[tuple[str, str], str] = {}
    for path in paths:
        data = json.loads(Path(path).read_text(encoding="utf-8"))  # read and checked by records_from_benchmark_json
        entries = data.get("quantbench", {}).get("failures", []) if isinstance(data.get("quantbench"), dict) else []
        # Checked as the bench writes them: a list of {"model", "variant", "reason"} strings.
        if not isinstance(entries, list):
            raise ConfigError(f"{path}: quantbench.failures is a {type(entries).__name__}, not a list; restore the "
                              "file the bench wrote or re-run the bench.")
        for i, entry in enumerate(entries):
            fields = ("model", "variant", "reason")
            if not (isinstance(entry, dict) and all(isinstance(entry.get(k), str) for k in fields)):
                raise ConfigError(f"{path}: quantbench.failures[{i}] is {str(entry)[:60]!r}, not an object of "
                                  "model, variant and reason strings; restore the file the bench wrote or re-run the bench.")
            failures[entry["model"], entry["variant"]] = entry["reason"]
    return failures


def uncertainty_from_benchmark_json(paths: Sequence[Path]) -> tuple[list[AccuracyComparison], list[CalibrationSpread]]:
    """The paired-bootstrap drops and calibration-seed spreads (``extra_info["quantbench"]["comparison"]``,
    ``["calibration_spread"]``) the files carry; files written before intervals existed give none, and
    their variants are judged on point estimates."""
    comparisons: dict[tuple[str, ...], AccuracyComparison] = {}
    spreads: dict[tuple[str, ...], CalibrationSpread] = {}
    for path in paths:
        for where, _, qb in _quantbench_entries(Path(path)):
            if not isinstance(qb, dict):
                continue
            for key in ("comparison", "reference_comparison"):
                if qb.get(key) is not None:
                    c = from_dict(AccuracyComparison, qb[key], where=f"{where}.{key}")
                    comparisons[c.model, c.variant, c.baseline, c.backend] = c
            if qb.get("calibration_spread") is not None:
                sp = from_dict(CalibrationSpread, qb["calibration_spread"], where=f"{where}.calibration_spread")
                spreads[sp.model, sp.variant, sp.backend] = sp
    return list(comparisons.values()), list(spreads.values())


def _check_device(timed_on: dict[tuple[str, str], tuple[str, str]], r: LatencyResult, where: str) -> None:
    first = timed_on.setdefault((r.model, r.backend), (r.device, where))
    if first[0] != r.device:
        raise ConfigError(
            f"{r.model} on {r.backend} was timed on {first[0]} in {first[1]} but on {r.device} in {where}; "
            "latencies of different devices cannot be joined: pass the runs of one device."
        )


def _entries(path: Path) -> list[_Entry]:
    """Every benchmark of ``path`` that carries quantbench records, its records read and checked."""
    return [_entry(where, params, qb) for where, params, qb in _quantbench_entries(path)]


def _entry(where: str, params: Any, qb: Any) -> _Entry:
    if not isinstance(qb, dict):
        raise ConfigError(f"{where} is a {type(qb).__name__}, not an object; "
                          "the file was not written by quantbench's bench suite.")
    latency = from_dict(LatencyResult, qb["latency"], where=f"{where}.latency") if qb.get("latency") is not None else None
    ev = from_dict(EvalResult, qb["eval"], where=f"{where}.eval") if qb.get("eval") is not None else None
    variant_opts = qb.get("variant_options")
    if variant_opts is not None and not isinstance(variant_opts, dict):
        raise ConfigError(f"{where}.variant_options is a {type(variant_opts).__name__}, not an object; "
                          "re-run the bench suite with this quantbench version.")
    _check_agreement(where, params, latency, ev)
    return _Entry(where, latency, ev, variant_opts)


def _check_agreement(where: str, params: Any, latency: LatencyResult | None, ev: EvalResult | None) -> None:
    """The benchmark's params, its latency record and its eval record name one (model, variant[, batch])."""
    if latency is not None and ev is not None:
        for name in ("model", "variant"):
            if getattr(latency, name) != getattr(ev, name):
                raise ConfigError(f"{where}: its latency record is of {name} {getattr(latency, name)!r} but its eval "
                                  f"record of {getattr(ev, name)!r}; the file was edited or mixed up: re-run the bench.")
    if not isinstance(params, Mapping):
        return  # not parametrized (hand-made files): nothing to check against
    for param, (name, read) in _PARAM_FIELDS.items():
        if param not in params:
            continue
        for kind, record in (("latency", latency), ("eval", ev)):
            if record is None or not hasattr(record, name):
                continue
            try:
                wanted = read(params[param])
            except (TypeError, ValueError):
                wanted = params[param]
            if getattr(record, name) != wanted:
                raise ConfigError(
                    f"{where}: its params say {param}={params[param]!r} but its {kind} record is of {name} "
                    f"{getattr(record, name)!r}; the file was edited or mixed up: re-run the bench.")


def _quantbench_entries(path: Path) -> list[tuple[str, Any, Any]]:
    """(where, pytest-benchmark params, extra_info["quantbench"]) of every benchmark that carries one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"benchmark JSON {path} does not exist; {_WRITTEN_BY}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"benchmark JSON {path} cannot be read ({exc}); check the path and its permissions.") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); {_WRITTEN_BY}") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ConfigError(f"{path} is not a pytest-benchmark JSON (no 'benchmarks' list); {_WRITTEN_BY}")
    entries = []
    for i, bench in enumerate(data["benchmarks"]):
        extra = bench.get("extra_info") if isinstance(bench, dict) else None
        if isinstance(extra, dict) and "quantbench" in extra:
            name = bench.get("name", "?")
            entries.append((f"{path}: benchmarks[{i}] ({name}) extra_info.quantbench", bench.get("params"),
                            extra["quantbench"]))
    if not entries:
        raise ConfigError(
            f"{path} has no quantbench records (no benchmark carries extra_info['quantbench']); "
            "pass the --benchmark-json output of quantbench's bench suite."
        )
    return entries
