"""What a bench session reads and checks before anything is built: its tables and its run.

`load_tables` reads and validates ``thresholds.toml`` and the variant table, so a bad key stops the
session at start-up; `run_identity` names the run all its processes (pytest-xdist workers, the
parallel build phase) write into.
"""

from __future__ import annotations

import fnmatch
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from quantbench.build.variants import Variant, check_baselines, load_variants
from quantbench.decision.thresholds import Thresholds
from quantbench.errors import ConfigError
from quantbench.plugin.options import BenchOptions
from quantbench.plugin.params import PARENT_RUN_ID_ENV, RUN_ID, model_id


@dataclass(frozen=True)
class Tables:
    """The validated tables of one session: criteria, the variants it runs, and start-up warnings."""

    thresholds: Thresholds
    variants: tuple[Variant, ...]
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class RunIdentity:
    run_id: str
    owns_run: bool  # the session that selects, reports and then drops the run ledger


def load_tables(options: BenchOptions) -> Tables:
    """Read the options' tables and check them against each other; QuantbenchError on the first problem."""
    thresholds = Thresholds.load(options.thresholds_file)
    table = load_variants(options.variants_file)
    thresholds.validate_variants(v.name for v in table)
    ids = [model_id(source) for source in options.models]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"--qb-model names two models {duplicates[0]!r} (the file stem is the model's name); "
                          "rename one of the files.")
    check_baselines(table, {i: thresholds.for_model(i).baseline for i in ids}, table=options.variants_file,
                    thresholds=options.thresholds_file)
    baselines = {thresholds.for_model(i).baseline for i in ids}
    variants = filter_variants(table, options.variant_patterns, baselines, options.variants_file)
    return Tables(thresholds, variants, tuple(thresholds.check_models(ids)))


def filter_variants(table: tuple[Variant, ...], patterns: tuple[str, ...] | None, baselines: set[str],
                    source: Path) -> tuple[Variant, ...]:
    """The variants --qb-variants selects (names or globs), in table order, baselines always kept."""
    if patterns is None:
        return table
    names = [v.name for v in table]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            raise ConfigError(f"--qb-variants: {pattern!r} matches no variant in {source}; choose from {', '.join(names)}.")
    return tuple(v for v in table if v.name in baselines or any(fnmatch.fnmatchcase(v.name, p) for p in patterns))


def run_identity(config: pytest.Config) -> RunIdentity:
    """The run id a worker or a build phase inherits from its parent session, else a new one it owns."""
    inherited = getattr(config, "workerinput", {}).get(RUN_ID) or os.environ.get(PARENT_RUN_ID_ENV)
    run_id = inherited or f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    return RunIdentity(run_id, owns_run=not inherited)
