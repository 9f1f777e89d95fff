"""`quantbench` command line: a thin adapter over the library, one sub-command per stage.

Every sub-command parses its options, calls one or two library functions, and prints or writes
what they return. User errors (`QuantbenchError`) end in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from quantbench import __version__
from quantbench.analysis import cli as analysis_cli
from quantbench.argtypes import non_negative_int, positive_int
from quantbench.backends import BuildOptions, backend_name
from quantbench.build.quantize import SCRATCH_PREFIX, ModelOptEcho
from quantbench.build.variants import Variant, VariantKind, check_baselines, load_variants
from quantbench.cache import (
    ArtifactCache,
    atomic_write_json,
    atomic_write_text,
    check_writable,
    remove_stale_scratch,
)
from quantbench.data.assets import cache_root, default_model
from quantbench.decision.results_store import EvalSettings, RunLedger
from quantbench.decision.selection import select
from quantbench.decision.thresholds import Thresholds
from quantbench.defaults import THRESHOLDS, VARIANTS, DefaultTable, describe_default, resolve_table
from quantbench.errors import ConfigError, OutputError, QuantbenchError
from quantbench.outputs.benchmark_json import (
    failures_from_benchmark_json,
    records_from_benchmark_json,
    uncertainty_from_benchmark_json,
)
from quantbench.outputs.compare import compare_runs, comparison_markdown, latency_check
from quantbench.outputs.history import build_history, history_markdown, load_run, load_runs, write_history
from quantbench.outputs.provenance import cache_key, collect_provenance
from quantbench.outputs.report import format_selection_table, write_report
from quantbench.pipeline import Pipeline, PipelineObserver, PipelineSettings
from quantbench.records import to_dict

Handler = Callable[[argparse.Namespace], int]


def _emit(args: argparse.Namespace, text: str) -> None:
    """A result line for the user (stdout), apart from the libraries' chatter (stderr)."""
    print(text, file=args.out, flush=True)


def _cache(args: argparse.Namespace):
    """The artefact cache; on first use, what killed runs left in it and in the temp dir is removed."""
    cache = ArtifactCache(args.cache_dir or cache_root())
    if not getattr(args, "cache_cleaned", False):
        # Before any work: a cache that cannot be written would fail minutes later, deep in a build.
        check_writable(folders=[(cache.root, "cache folder (--cache-dir or QUANTBENCH_CACHE)")])
        cache.remove_stale_files()
        remove_stale_scratch(SCRATCH_PREFIX)
        args.cache_cleaned = True
    return cache


def _table_path(given: str | None, table: DefaultTable, option: str) -> Path:
    """The table a command reads: ``given``, else the current folder's, else quantbench's own (`quantbench.defaults`)."""
    return resolve_table(table, given, project=Path.cwd(), option=option)


class _EvalNote(PipelineObserver):
    """Remembers whether the evaluation was computed or read from the store."""

    computed = False

    def evaluated(self, result, *, computed: bool) -> None:
        self.computed = computed


def _pipeline(args: argparse.Namespace, observer=None):
    """The one pipeline, set up from this command's options (each sub-command has a subset of them)."""
    given = {name: getattr(args, name, None) for name in ("data", "calib_data", "limit", "batch_size", "batch")}
    batch_size = given["batch_size"] or 1
    settings = PipelineSettings(
        eval_data=Path(given["data"]) if given["data"] else None,
        calib_data=Path(given["calib_data"]) if given["calib_data"] else None,
        eval_images=given["limit"], calib_seed=getattr(args, "seed", 0) or 0, model_batch=given["batch"],
        backend=getattr(args, "backend", None) or "auto",
        build=BuildOptions(batch_sizes=(batch_size,)), evaluation=EvalSettings(batch_size=batch_size),
    )
    if not hasattr(args, "pipeline"):
        args.pipeline = Pipeline(_cache(args), settings, observer=observer, progress=not getattr(args, "quiet", True))
    return args.pipeline


def _variant(args: argparse.Namespace) -> tuple[Variant, Path | None, tuple[Variant, ...]]:
    """The --variant of the table, with --calib-images applied (so its record says what was used),
    the table's path and the whole table (None and () for the base model itself)."""
    if not args.variant:
        return Variant(name="base", kind=VariantKind.FP32), None, ()
    path = _table_path(args.variants_file, VARIANTS, "--variants-file")
    variants = load_variants(path)
    table = {v.name: v for v in variants}
    if args.variant not in table:
        raise ConfigError(f"variant {args.variant!r} is not in {path}; choose one of {', '.join(table)} "
                          "or pass another table with --variants-file.")
    variant = table[args.variant]
    if args.calib_images and variant.needs_calibration:
        variant = dataclasses.replace(variant, calib_images=args.calib_images)
    return variant, path, variants


def _model_and_variant(args: argparse.Namespace, pipeline):
    """The model and the variant meant for it (the table is checked before a model is fetched)."""
    variant, table_path, variants = _variant(args)
    model = pipeline.model(args.model or default_model())
    if not variant.applies_to(model.name):
        raise ConfigError(f"{variant.skip_reason(model.name)}; choose a variant meant for {model.name}.")
    if table_path is not None:  # the baseline this model is judged against must be one the table builds for it
        thresholds = _table_path(getattr(args, "thresholds", None), THRESHOLDS, "--thresholds")
        check_baselines(variants, {model.name: Thresholds.load(thresholds).for_model(model.name).baseline},
                        table=table_path, thresholds=thresholds)
    return model, variant


def cmd_export(args: argparse.Namespace) -> int:
    model = _pipeline(args).model(args.model or default_model())
    _emit(args, json.dumps({"name": model.name, "onnx": str(model.path), "sha256": model.sha256,
                      "classes": model.num_classes, "anchors": model.num_anchors,
                      "batch": model.batch, "untrained": model.untrained}, indent=2))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    calib = _pipeline(args).calibration(args.calib_images or 128, 640)
    _emit(args, json.dumps({"npy": str(calib.path), "sha256": calib.sha256, "images": calib.num_images,
                      "seed": calib.seed}, indent=2))
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    pipeline = _pipeline(args)
    model, variant = _model_and_variant(args, pipeline)
    _emit(args, json.dumps(to_dict(pipeline.build(model, variant)), indent=2))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    if args.json:  # checked before the evaluation, which may take minutes
        check_writable(files=[(args.json, "--json file")])
    note = _EvalNote()
    pipeline = _pipeline(args, observer=note)
    if pipeline.fallback_reason:
        logging.getLogger("quantbench").warning("TensorRT not used (%s): using ONNX Runtime.", pipeline.fallback_reason)
    model, variant = _model_and_variant(args, pipeline)
    result = pipeline.evaluation(model, variant)
    m, t = result.metrics, result.timing
    untrained = "  (untrained model: random weights, this mAP means nothing)" if result.untrained else ""
    _emit(args, f"{result.model} {result.variant} on {result.backend}: mAP50-95 {m.map50_95:.4f}  "
          f"mAP50 {m.map50:.4f}  over {result.num_images} images{untrained}")
    if result.skipped_images:
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(result.skip_reasons.items()))
        _emit(args, f"skipped {len(result.skipped_images)} images ({why or 'unreadable'}), not in the mAP: "
              f"{', '.join(result.skipped_images[:5])}")
    stored = "" if note.computed else " (measured earlier: read from the results store)"
    _emit(args, f"inference {t.inference_s:.2f} s, total {t.total_s:.2f} s ({t.images_per_s:.1f} images/s){stored}")
    if args.json:
        try:  # the results are printed first: a folder that broke since the start loses nothing measured
            atomic_write_json(args.json, to_dict(result))
        except OSError as exc:
            raise OutputError(f"could not write --json file {args.json} ({exc.strerror or exc}); the result "
                              "is printed above, pass a --json path you can write to.") from None
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    if args.report_dir:  # before reading anything: a report that cannot be written loses the selection
        check_writable(folders=[(args.report_dir, "--report-dir")])
    ledgers = [Path(p) for p in args.json_files if Path(p).is_dir()]
    files = [Path(p) for p in args.json_files if not Path(p).is_dir()]
    evals, latencies, options = records_from_benchmark_json(files) if files else ([], [], {})
    found = failures_from_benchmark_json(files)
    comparisons, spreads = uncertainty_from_benchmark_json(files) if files else ([], [])
    timed = {(r.model, r.variant) for r in latencies}
    # a later file timed it after all
    failures: dict[str | tuple[str, str], str] = {k: why for k, why in found.items() if k not in timed}
    for folder in ledgers:  # a bench run's records kept in the cache (its report could not be written)
        records = RunLedger(folder).read()
        if not (records.evals or records.latencies or records.failures):
            raise ConfigError(f"{folder} holds no quantbench run records; pass a benchmark JSON or a kept run folder.")
        evals += records.evals
        latencies += records.latencies
        options.update(records.variant_options)
        failures.update(records.failures)
        comparisons += records.comparisons
        spreads += records.spreads
    thresholds = Thresholds.load(_table_path(args.thresholds, THRESHOLDS, "--thresholds"))
    for warning in thresholds.check_models(sorted({*(r.model for r in evals), *(r.model for r in latencies)})):
        print(f"quantbench: warning: {warning}", file=sys.stderr)
    selections = select(evals, latencies, thresholds, reference_batch=args.reference_batch,
                        variant_options=options, failures=failures, comparisons=comparisons,
                        spreads=spreads)
    for selection in selections:
        _emit(args, format_selection_table(selection))
    if args.report_dir:
        paths = write_report(selections, Path(args.report_dir),
                             rebuild_command=shlex.join(["quantbench", *args.argv]))
        _emit(args, "wrote " + ", ".join(str(p) for p in paths.values()))
    return 0 if all(s.winner for s in selections) else 1


def cmd_history(args: argparse.Namespace) -> int:
    check_writable(folders=[(args.out_dir, "--out-dir")])
    thresholds = Thresholds.load(_table_path(args.thresholds, THRESHOLDS, "--thresholds"))
    runs = load_runs([Path(p) for p in args.runs])
    histories = build_history(runs, thresholds, reference_batch=args.reference_batch, mix=args.mix)
    _emit(args, history_markdown(histories))
    paths = write_history(histories, Path(args.out_dir))
    _emit(args, "wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    if args.markdown:
        check_writable(files=[(args.markdown, "--markdown file")])
    thresholds = Thresholds.load(_table_path(args.thresholds, THRESHOLDS, "--thresholds"))
    comparison = compare_runs(load_run(Path(args.base)), load_run(Path(args.new)), thresholds, args.fail_latency or ())
    markdown = comparison_markdown(comparison)
    _emit(args, markdown)
    if args.markdown:
        _emit(args, f"wrote {atomic_write_text(args.markdown, markdown)}")
    return 1 if comparison.failed else 0


def cmd_provenance(args: argparse.Namespace) -> int:
    if args.cache_key or args.device_key:
        _emit(args, cache_key(tensorrt=args.cache_key))
    else:
        _emit(args, json.dumps(to_dict(collect_provenance()), indent=2))
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model source: .onnx, .pt or .yaml (default: yolo11n.pt, or the "
                   "offline yolo11n-coco.onnx when QUANTBENCH_ASSETS is set)")
    p.add_argument("--cache-dir", type=Path, help="artefact cache (default: ~/.cache/quantbench)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _variant_opts(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    p.add_argument("--variant", required=required, help="variant name from the variants table"
                   + ("" if required else " (default: the base model)"))
    p.add_argument("--variants-file", help=f"variant table (default: {describe_default(VARIANTS)})")
    p.add_argument("--calib-data", help="calibration images: a COCO folder or a folder of images")
    p.add_argument("--calib-images", type=positive_int, help="number of calibration images")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed for choosing calibration images")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quantbench", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"quantbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _stage_commands(sub)
    _record_commands(sub)
    analysis_cli.add_commands(sub, analysis_cli.CliHooks(common_options=_common, open_cache=_cache, emit=_emit))
    return parser


def _stage_commands(sub) -> None:
    """The pipeline's stages, one command each."""
    p = sub.add_parser("export", help="resolve a model source to a validated ONNX (cached)")
    _common(p)
    p.add_argument("--batch", type=positive_int, help="fix the batch axis to this size")
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("calibrate", help="build the calibration tensor (cached .npy)")
    _common(p)
    p.add_argument("--calib-data", help="calibration images: a COCO folder or a folder of images")
    p.add_argument("--calib-images", type=positive_int, help="number of images (default 128)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed for choosing calibration images")
    p.set_defaults(handler=cmd_calibrate)

    p = sub.add_parser("quantize", help="build one variant ONNX with ModelOpt (cached)")
    _common(p)
    _variant_opts(p, required=True)
    p.set_defaults(handler=cmd_quantize)

    p = sub.add_parser("eval", help="COCO mAP of a model or one of its variants")
    _common(p)
    _variant_opts(p)
    p.add_argument("--data", help="COCO folder (images/ + instances.json); default: val500 or COCO val2017 subset")
    p.add_argument("--limit", type=positive_int, help="evaluate only the first N images")
    p.add_argument("--batch-size", type=positive_int, default=1)
    p.add_argument("--backend", type=backend_name, default="auto",
                   help="auto (TensorRT when installed with a GPU, else ONNX Runtime), onnxruntime or tensorrt")
    p.add_argument("--json", type=Path, help="write the result record here")
    p.set_defaults(handler=cmd_eval)


def _record_commands(sub) -> None:
    """Commands over saved records: select, history, compare, provenance."""
    p = sub.add_parser("select", help="rank saved pytest-benchmark JSON runs and name the winner")
    p.add_argument("json_files", nargs="+", help="pytest-benchmark --benchmark-json files, or run folders a bench "
                   "session kept in its cache (<cache>/runs/<id>) when it could not write its report")
    p.add_argument("--thresholds", help=f"pass/fail criteria (default: {describe_default(THRESHOLDS)})")
    p.add_argument("--reference-batch", type=positive_int, default=1)
    p.add_argument("--report-dir", help="also write report.md, selection.json and pareto.png here")
    p.set_defaults(handler=cmd_select)

    p = sub.add_parser("history", help="mAP and latency per variant over saved runs: a table and a PNG per model")
    p.add_argument("runs", nargs="+", help="pytest-benchmark --benchmark-json files, or --benchmark-storage folders")
    p.add_argument("--thresholds", help=f"criteria that name each run's winner (default: {describe_default(THRESHOLDS)})")
    p.add_argument("--reference-batch", type=positive_int, default=1)
    p.add_argument("--out-dir", default="reports/history", help="where history.md and history-<model>.png go")
    p.add_argument("--mix", action="store_true",
                   help="draw runs on different devices or backends as one line (refused without it)")
    p.set_defaults(handler=cmd_history)

    p = sub.add_parser("compare", help="gate a run against a saved one: latency regressions and mAP changes; "
                       "exit status 1 when one is beyond its limit")
    p.add_argument("base", help="the saved run to compare against (pytest-benchmark JSON)")
    p.add_argument("new", help="the run to gate (pytest-benchmark JSON)")
    p.add_argument("--thresholds", help="mAP50-95 budget per model: a change beyond max_abs_drop or max_rel_drop "
                   f"fails (default: {describe_default(THRESHOLDS)})")
    p.add_argument("--fail-latency", action="append", type=latency_check, metavar="FIELD:LIMIT",
                   help="pytest-benchmark's --benchmark-compare-fail syntax, e.g. median:10%% or mean:0.002 "
                        "(seconds); repeatable (default: median:10%%)")
    p.add_argument("--markdown", type=Path, help="also write the comparison as Markdown here (a CI step summary)")
    p.set_defaults(handler=cmd_compare)

    p = sub.add_parser("provenance", help="the versions, GPU, driver and commit that records of this machine carry")
    key = p.add_mutually_exclusive_group()
    key.add_argument("--cache-key", action="store_true",
                     help="print only a token naming the GPU and the installed TensorRT (engine cache key in CI)")
    key.add_argument("--device-key", action="store_true",
                     help="print only a token naming the GPU (history cache key in CI: it spans TensorRT upgrades)")
    p.set_defaults(handler=cmd_provenance)


def _quiet_echoes() -> None:
    """ModelOpt prints its log lines itself: the root handler does not print them a second time."""

    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, ModelOptEcho) for f in handler.filters):
            handler.addFilter(ModelOptEcho())


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _quiet_echoes()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    args.out = sys.stdout
    try:
        # Results are printed to args.out; what ModelOpt, ONNX Runtime and Ultralytics print while
        # working goes to stderr, so `quantbench quantize ... | jq` reads clean JSON.
        with contextlib.redirect_stdout(sys.stderr):
            return args.handler(args)
    except QuantbenchError as exc:
        print(f"quantbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("quantbench: interrupted; finished artefacts stay in the cache.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
