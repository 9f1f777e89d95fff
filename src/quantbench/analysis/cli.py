"""`quantbench sensitivity` and `quantbench search`: their options and handlers.

`quantbench.cli` adds them with `add_commands(subparsers, hooks)`; the hooks are what they share
with the other sub-commands (the common options, the cache, the result printer), passed in so that
this module does not import `quantbench.cli` back. Every default comes from `AnalysisOptions` and
`SearchConfig`: the command line and the library cannot disagree.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantbench.analysis.search import DEFAULT_CONFIDENCE, SearchConfig, Strategy, run_search, verdict_sentence
from quantbench.analysis.sensitivity import run_sensitivity
from quantbench.analysis.setup import AnalysisInputs, AnalysisOptions
from quantbench.argtypes import non_negative_int, positive_int
from quantbench.build.variants import CALIBRATION_METHODS
from quantbench.cache import ArtifactCache
from quantbench.data.assets import default_calib_data, default_model
from quantbench.defaults import THRESHOLDS, describe_default, resolve_table

_OPTIONS = AnalysisOptions()
_SEARCH = SearchConfig()


@dataclass(frozen=True)
class CliHooks:
    """What the analysis commands take from `quantbench.cli`."""

    common_options: Callable[[argparse.ArgumentParser], None]  # --model, --cache-dir, -q
    open_cache: Callable[[argparse.Namespace], ArtifactCache]
    emit: Callable[[argparse.Namespace, str], None]  # one result line on stdout


# AnalysisOptions fields set from the command line: (field, parser type, help); --groups apart (a list).
_ANALYSIS_FLAGS: tuple[tuple[str, Callable[[str], Any], str], ...] = (
    ("calib_images", positive_int, "calibration images, a seeded choice from --calib-data"),
    ("seed", non_negative_int, "seed for choosing calibration images"),
    ("imgsz", positive_int, "model input side (a multiple of 32)"),
    ("probe_images", positive_int, "images the probe mAP is measured on"),
    ("proxy_images", positive_int, "calibration images the output proxies (SQNR, cosine vs FP32) run on"),
    ("top_k", non_negative_int, "best-ranked groups whose probe mAP is measured (0: proxies only)"),
    ("batch_size", positive_int, "ONNX Runtime batch for proxies and probes"),
)


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def add_analysis_options(p: argparse.ArgumentParser, out_dir: str) -> None:
    """The options of `sensitivity` and `search`, each defaulting to its `AnalysisOptions` field."""
    p.add_argument("--calib-data", help="calibration images (default: calib500 or a COCO subset)")
    p.add_argument("--probe-data", help="COCO folder for probe mAP, disjoint from the evaluation data "
                   "(default: the calibration folder; its calibration images are left out of the probe)")
    p.add_argument("--calibration-method", default=_OPTIONS.calibration_method, choices=CALIBRATION_METHODS)
    for field, parse, help_text in _ANALYSIS_FLAGS:
        default = getattr(_OPTIONS, field)
        p.add_argument(_flag(field), type=parse, default=default, help=f"{help_text} (default {default})")
    p.add_argument("--groups", nargs="+", action="extend", metavar="NODE",
                   help="analyse only these layer groups (node names, as in sensitivity.csv)")
    p.add_argument("--out-dir", default=out_dir)


def add_search_options(p: argparse.ArgumentParser) -> None:
    """The options of `search` alone, each defaulting to its `SearchConfig` (or `AnalysisOptions`) field."""
    p.add_argument("--budget", type=float, help="max mAP50-95 drop vs FP32 as a fraction (default: thresholds.toml)")
    p.add_argument("--thresholds", help="where the budget comes from without --budget "
                   f"(default: {describe_default(THRESHOLDS)})")
    p.add_argument("--variant-name", default=_OPTIONS.variant_name, help="name of the emitted variant")
    # A float, not argtypes.fraction: SearchConfig's own error says 85 is not 0.85 (exit status 2).
    p.add_argument("--min-int8-flop-share", type=float, default=_SEARCH.min_int8_flop_share,
                   help=f"keep at least this share of linear-op FLOPs in INT8 (default {_SEARCH.min_int8_flop_share})")
    p.add_argument("--strategy", choices=tuple(s.value for s in Strategy), default=_SEARCH.strategy.value,
                   help="bisect: few probe runs; greedy: one group at a time (a full accuracy curve)")
    p.add_argument("--max-steps", type=positive_int, default=_SEARCH.max_steps,
                   help="probe evaluations, all phases together")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the real ModelOpt build of the found split (the verdict is the simulation's)")
    # A float, not argtypes.fraction: SearchConfig's own error names the allowed levels (exit status 2).
    p.add_argument("--confidence", type=float, default=_SEARCH.confidence,
                   help="level of the drops' paired-bootstrap intervals (default: thresholds.toml's confidence "
                        f"when the budget comes from it, else {DEFAULT_CONFIDENCE})")
    p.add_argument("--resamples", type=positive_int, default=_SEARCH.resamples,
                   help=f"bootstrap resamples of each drop interval (default {_SEARCH.resamples})")


def _from_args(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The fields of dataclass ``cls`` that the parsed command defines (the rest keep their defaults)."""
    given = vars(args)
    return {f.name: given[f.name] for f in dataclasses.fields(cls) if f.name in given}


def analysis_options(args: argparse.Namespace) -> AnalysisOptions:
    """The `AnalysisOptions` of a parsed `sensitivity` or `search` command (checked: `ConfigError`)."""
    return AnalysisOptions(**_from_args(AnalysisOptions, args))


def search_config(args: argparse.Namespace) -> SearchConfig:
    """The `SearchConfig` of a parsed `search` command (checked: `ConfigError`)."""
    given = _from_args(SearchConfig, args)
    if args.no_verify:
        given["max_verify"] = 0
    return SearchConfig(**given)


def _inputs(args: argparse.Namespace, hooks: CliHooks) -> AnalysisInputs:
    calib = Path(args.calib_data) if args.calib_data else default_calib_data()
    # The model source as given: the analysis resolves (exports) it at --imgsz.
    return AnalysisInputs(model=args.model or default_model(), calib_folder=calib,
                          probe_folder=Path(args.probe_data) if args.probe_data else calib, cache=hooks.open_cache(args))


def cmd_sensitivity(args: argparse.Namespace, *, hooks: CliHooks) -> int:
    options = analysis_options(args)  # checked before anything is resolved or built
    report = run_sensitivity(_inputs(args, hooks), Path(args.out_dir), options=options, progress=not args.quiet)
    hooks.emit(args, f"{report.num_groups} quantized layer groups of {report.model}, most sensitive first:")
    for group in report.groups[:10]:
        hooks.emit(args, f"  {group.name}")
    hooks.emit(args, "wrote " + ", ".join(report.files.values()))
    return 0


def cmd_search(args: argparse.Namespace, *, hooks: CliHooks) -> int:
    options, config = analysis_options(args), search_config(args)  # checked before anything is built
    budget = args.budget if args.budget is not None else \
        resolve_table(THRESHOLDS, args.thresholds, project=Path.cwd(), option="--thresholds")
    result = run_search(_inputs(args, hooks), Path(args.out_dir), budget=budget, options=options, config=config,
                        progress=not args.quiet)
    o = result.outcome
    verdict = "within" if o.met_budget else "NOT within"
    hooks.emit(args, f"{result.variant_name}: {len(o.excluded)} layer groups kept out of INT8, "
               f"{100 * o.int8_flop_share:.1f} % of linear-op FLOPs INT8; {verdict} the budget on {result.probe} "
               f"({verdict_sentence(o)}).")
    hooks.emit(args, result.variant_toml)
    hooks.emit(args, "wrote " + ", ".join(result.files.values()))
    return 0 if o.met_budget else 1


def add_commands(subparsers: Any, hooks: CliHooks) -> None:
    """Add `sensitivity` and `search` to `quantbench`'s sub-command parsers."""
    p = subparsers.add_parser("sensitivity", help="per-layer INT8 sensitivity report (Markdown, CSV, PNG)")
    hooks.common_options(p)
    add_analysis_options(p, "reports/sensitivity")
    p.set_defaults(handler=functools.partial(cmd_sensitivity, hooks=hooks))

    p = subparsers.add_parser("search", help="find the FP16/INT8 split that fits the mAP budget (resumable); "
                              "exit status 1 when the budget is not met by the point drop (the printed verdict "
                              "says pass, fail or inconclusive by its interval)")
    hooks.common_options(p)
    add_analysis_options(p, "reports/search")
    add_search_options(p)
    p.set_defaults(handler=functools.partial(cmd_search, hooks=hooks))
