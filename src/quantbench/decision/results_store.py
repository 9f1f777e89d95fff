"""The on-disk store of bench results, shared by pytest-xdist workers and by later runs.

Two parts, both under one `ArtifactCache` root:

- Evaluation results keyed by content: the variant ONNX's sha256, the dataset fingerprint (the
  annotations' bytes, the image selection and every image's bytes), the backend and its device, the evaluation
  settings and the quantbench version. They are cache artefacts (kind ``eval``), so the cache's
  per-key file lock makes concurrent workers evaluate a key once, its atomic publish means no
  reader sees half a file, and a second run with nothing changed evaluates nothing. Model and
  variant names are not part of the key (two names for one ONNX share a result); they are put
  back on the record that is returned.
- A run ledger: every record one ``pytest bench`` session produces (evaluations, latencies,
  variant builds, build failures), written by whichever process produced it into
  ``runs/<run id>/`` as one atomic JSON file per record, and read back by the controlling process
  at the end of the session, where the selection is made.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantbench import __version__
from quantbench.cache import ArtifactCache, atomic_write_json, atomic_write_text, hash_key, owner_is_gone, owner_tag
from quantbench.evaluation.detections import NmsConfig
from quantbench.records import (
    SCHEMA_VERSION,
    AccuracyComparison,
    CalibrationSpread,
    EvalResult,
    LatencyResult,
    VariantBuild,
    from_dict,
    to_dict,
)

EVAL_KIND = "eval"
RUNS_DIR = "runs"


@dataclass(frozen=True)
class EvalSettings:
    """Everything besides the ONNX, the data and the backend that decides an evaluation's result."""

    batch_size: int = 1
    nms: NmsConfig = field(default_factory=NmsConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def eval_key(*, onnx_sha256: str, dataset_fingerprint: str, backend: str, device: str, settings: EvalSettings) -> str:
    """Content key of one evaluation (see the module docstring for what goes in and why)."""
    return hash_key(EVAL_KIND, SCHEMA_VERSION, __version__, onnx_sha256, dataset_fingerprint, backend, device,
                    settings.to_dict())


@dataclass(frozen=True)
class StoredEval:
    """An evaluation result and whether this call computed it (False: read from the store)."""

    result: EvalResult
    key: str
    computed: bool


class ResultsStore:
    """Evaluation results by content key, plus one ledger per bench session."""

    def __init__(self, cache: ArtifactCache):
        self.cache = cache

    def lookup(self, key: str, *, model: str, variant: str) -> EvalResult | None:
        """The stored result for ``key`` under these names, or None. Never evaluates, never waits."""
        entry = self.cache.lookup(EVAL_KIND, key, ".json")
        return None if entry is None else self._read(entry.path, model, variant)

    def get_or_evaluate(
        self, key: str, evaluate: Callable[[], EvalResult], *, model: str, variant: str
    ) -> StoredEval:
        """The result for ``key``, calling ``evaluate`` once (across processes) when it is absent."""

        def build(tmp: Path) -> dict[str, Any]:
            result = evaluate()
            tmp.write_text(json.dumps(to_dict(result), indent=2) + "\n", encoding="utf-8")
            return {"model": result.model, "variant": result.variant, "dataset": result.dataset}

        entry = self.cache.get_or_build(EVAL_KIND, key, ".json", build, label=f"evaluation of {model}/{variant}")
        return StoredEval(self._read(entry.path, model, variant), key, computed=entry.built)

    def ledger(self, run_id: str) -> RunLedger:
        return RunLedger(self.cache.root / RUNS_DIR / run_id)

    def remove_orphan_ledgers(self) -> list[Path]:
        """Remove the run ledgers of bench sessions killed on this machine (kept ones stay).

        A session that is killed never reaches its end, where it drops its ledger; its evaluations
        are in the store anyway, so what is left is only clutter.
        """
        removed = []
        for folder in sorted((self.cache.root / RUNS_DIR).glob("[!.]*")):
            if folder.is_dir() and RunLedger(folder).is_orphan():
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        return removed

    @staticmethod
    def _read(path: Path, model: str, variant: str) -> EvalResult:
        result = from_dict(EvalResult, json.loads(path.read_text(encoding="utf-8")), where=str(path))
        return dataclasses.replace(result, model=model, variant=variant)


@dataclass(frozen=True)
class BuildNote:
    """One process's request for one variant: whether ModelOpt ran for it (``built``) or the cache answered."""

    model: str
    variant: str
    built: bool
    process: str  # "serial" or the pytest-xdist worker id
    build: VariantBuild


@dataclass(frozen=True)
class RunRecords:
    """Everything one bench session recorded, whichever process recorded it."""

    evals: tuple[EvalResult, ...]  # one per (model, variant, backend)
    evals_computed: tuple[tuple[str, str], ...]  # (model, variant) evaluated in this run, not read back
    latencies: tuple[LatencyResult, ...]
    variant_options: dict[tuple[str, str], dict[str, Any]]  # (model, variant) -> its options
    builds: tuple[BuildNote, ...]
    failures: dict[tuple[str, str], str]  # (model, variant) -> why its build failed
    # A build phase's test errors: node id -> (model, variant, last line of the error).
    phase_errors: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    comparisons: tuple[AccuracyComparison, ...] = ()  # paired-bootstrap drops per (model, variant, against, backend)
    spreads: tuple[CalibrationSpread, ...] = ()  # mAP over calibration seeds, one per (model, variant, backend)

    @property
    def variants_built(self) -> tuple[tuple[str, str], ...]:
        """(model, variant) for every ModelOpt build this run made; a repeat means a duplicated build."""
        return tuple((b.model, b.variant) for b in self.builds if b.built)


class RunLedger:
    """One bench session's records: one JSON file per record, named by what it is about.

    ``OWNER`` names the session that owns it (`cache.owner_tag`), ``KEPT`` says why it outlived
    that session (its report could not be written): `quantbench select <folder>` reads it.
    """

    OWNER, KEPT = "OWNER", "KEPT"

    def __init__(self, root: Path):
        self.root = Path(root)

    def claim(self) -> None:
        """Mark this process as the owner: the ledger is an orphan once the process is gone."""
        atomic_write_text(self.root / self.OWNER, owner_tag() + "\n")

    def keep(self, reason: str) -> None:
        atomic_write_text(self.root / self.KEPT, reason + "\n")

    def is_orphan(self) -> bool:
        if (self.root / self.KEPT).exists():
            return False
        try:
            return owner_is_gone((self.root / self.OWNER).read_text())
        except FileNotFoundError:  # a ledger from before owners were recorded: only when old
            return time.time() - self.root.stat().st_mtime > 24 * 3600

    def add_eval(self, result: EvalResult, *, computed: bool, variant_options: Mapping[str, Any], process: str) -> None:
        # One entry per process: two workers may both need a result that only one of them computed.
        self._write("eval", (result.model, result.variant, result.backend, process),
                    {"eval": to_dict(result), "computed": computed, "variant_options": dict(variant_options)})

    def add_comparison(self, comparison: AccuracyComparison) -> None:
        self._write("comparison", (comparison.model, comparison.variant, comparison.baseline, comparison.backend),
                    {"comparison": to_dict(comparison)})

    def add_spread(self, spread: CalibrationSpread) -> None:
        self._write("spread", (spread.model, spread.variant, spread.backend), {"spread": to_dict(spread)})

    def add_latency(self, result: LatencyResult) -> None:
        self._write("latency", (result.model, result.variant, result.backend, result.batch_size),
                    {"latency": to_dict(result)})

    def add_build(self, build: VariantBuild, *, process: str) -> None:
        # ModelOpt ran for this call only when the build was not cached; fp32 is the base model itself.
        built = not build.cached and build.kind != "fp32"
        self._write("build", (build.model, build.variant, process),
                    {"build": to_dict(build), "built": built, "process": process})

    def add_failure(self, model: str, variant: str, reason: str) -> None:
        self._write("failure", (model, variant), {"model": model, "variant": variant, "reason": reason})

    def add_phase_error(self, nodeid: str, model: str, variant: str, message: str) -> None:
        self._write("phase_error", (nodeid,), {"nodeid": nodeid, "model": model, "variant": variant,
                                               "message": message})

    def read(self) -> RunRecords:
        evals, computed, latencies, options, builds, failures = {}, [], [], {}, [], {}
        phase_errors: dict[str, tuple[str, str, str]] = {}
        comparisons: dict[tuple[str, str, str, str], AccuracyComparison] = {}
        spreads: dict[tuple[str, str, str], CalibrationSpread] = {}
        # "[!.]": atomic writes go through hidden temporary files first.
        for path in sorted(self.root.glob("[!.]*.json")) if self.root.is_dir() else ():
            kind = path.name.split("-", 1)[0]
            data = json.loads(path.read_text(encoding="utf-8"))
            if kind == "eval":
                result = from_dict(EvalResult, data["eval"], where=str(path))
                evals[result.model, result.variant, result.backend] = result
                options[result.model, result.variant] = data["variant_options"]
                if data["computed"]:
                    computed.append((result.model, result.variant))
            elif kind == "latency":
                latencies.append(from_dict(LatencyResult, data["latency"], where=str(path)))
            elif kind == "build":
                build = from_dict(VariantBuild, data["build"], where=str(path))
                builds.append(BuildNote(build.model, build.variant, data["built"], data["process"], build))
            elif kind == "failure":
                failures[data["model"], data["variant"]] = data["reason"]
            elif kind == "phase_error":
                phase_errors[data["nodeid"]] = (data["model"], data["variant"], data["message"])
            elif kind == "comparison":
                c = from_dict(AccuracyComparison, data["comparison"], where=str(path))
                comparisons[c.model, c.variant, c.baseline, c.backend] = c
            elif kind == "spread":
                sp = from_dict(CalibrationSpread, data["spread"], where=str(path))
                spreads[sp.model, sp.variant, sp.backend] = sp
        return RunRecords(tuple(evals.values()), tuple(computed), tuple(latencies), options, tuple(builds), failures,
                          phase_errors, tuple(comparisons.values()), tuple(spreads.values()))

    def remove(self) -> None:
        if self.root.is_dir():
            shutil.rmtree(self.root)

    def _write(self, kind: str, about: tuple[Any, ...], payload: dict[str, Any]) -> None:
        # The same record written twice (a re-run test) replaces the first: last one wins.
        atomic_write_json(self.root / f"{kind}-{hash_key(*about, length=16)}.json", payload)
