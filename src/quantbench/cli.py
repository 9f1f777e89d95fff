"""`quantbench` command line: a thin adapter over the library, one sub-command per stage.

Every sub-command parses its options, calls one or two library functions, and prints or writes
what they return. User errors (`QuantbenchError`) end in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .errors import BackendError, ConfigError, OutputError, QuantbenchError

Handler = Callable[[argparse.Namespace], int]


def _whole_number(text: str, minimum: int, bound: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{text!r} must be {bound}")
    return value


def positive_int(text: str) -> int:
    """argparse ``type=`` for counts of 1 or more (shared with the bench suite's options)."""
    return _whole_number(text, 1, "at least 1")


def non_negative_int(text: str) -> int:
    """argparse ``type=`` for counts of 0 or more (shared with the bench suite's options)."""
    return _whole_number(text, 0, "0 or more")


def latency_check(text: str):
    """argparse ``type=`` for ``compare --fail-latency`` (`compare.parse_latency_check`, imported when used)."""
    from .compare import parse_latency_check

    return parse_latency_check(text)


def _emit(args: argparse.Namespace, text: str) -> None:
    """A result line for the user (stdout), apart from the libraries' chatter (stderr)."""
    print(text, file=args.out, flush=True)


def _cache(args: argparse.Namespace):
    """The artefact cache; on first use, what killed runs left in it and in the temp dir is removed."""
    from .assets import cache_root
    from .cache import ArtifactCache, remove_stale_scratch
    from .quantize import SCRATCH_PREFIX

    cache = ArtifactCache(args.cache_dir or cache_root())
    if not getattr(args, "cache_cleaned", False):
        cache.remove_stale_files()
        remove_stale_scratch(SCRATCH_PREFIX)
        args.cache_cleaned = True
    return cache


# The source checkout this module runs from (an editable install): defaults are found there too.
_CHECKOUT = Path(__file__).resolve().parents[2]


def _table_path(given: str | None, default: Path, option: str, what: str) -> Path:
    """``given``, else ``default`` in the current folder, else in the source checkout; one sentence if missing."""
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise ConfigError(f"{what} {path} ({option}) does not exist; pass an existing file to {option}.")
        return path
    for path in (default, _CHECKOUT / default):
        if path.is_file():
            return path
    raise ConfigError(f"no {what}: {default} is neither in the current folder nor in {_CHECKOUT}; "
                      f"pass one with {option} PATH.")


def _model(args: argparse.Namespace):
    from .assets import default_model
    from .export import resolve_model

    return resolve_model(args.model or default_model(), _cache(args), batch=getattr(args, "batch", None))


def _variant(args: argparse.Namespace):
    """The --variant of the table, with --calib-images applied (so its record says what was used)."""
    import dataclasses

    from .variants import DEFAULT_VARIANTS, load_variants

    path = _table_path(args.variants_file, DEFAULT_VARIANTS, "--variants-file", "variant table")
    table = {v.name: v for v in load_variants(path)}
    if args.variant not in table:
        raise ConfigError(f"variant {args.variant!r} is not in {path}; choose one of {', '.join(table)} "
                          "or pass another table with --variants-file.")
    variant = table[args.variant]
    if args.calib_images and variant.needs_calibration:
        variant = dataclasses.replace(variant, calib_images=args.calib_images)
    return variant


def _calibration(args: argparse.Namespace, num_images: int, size: int = 640):
    from .assets import default_calib_data
    from .calibration import build_calibration

    folder = Path(args.calib_data) if args.calib_data else default_calib_data()
    # The calibration tensor must have the model's input side, as the bench fixtures build it.
    return build_calibration(folder, num_images, cache=_cache(args), seed=args.seed, size=size)


def _variant_onnx(args: argparse.Namespace):
    """Base model, or the requested variant of it built through ModelOpt (cached)."""
    from .quantize import quantize_variant

    variant = _variant(args) if args.variant else None  # the table is checked before a model is fetched
    model = _model(args)
    if variant is None:
        return model, None
    if not variant.applies_to(model.name):
        raise ConfigError(f"{variant.skip_reason(model.name)}; choose a variant meant for {model.name}.")
    calib = None
    if variant.needs_calibration:
        calib = _calibration(args, variant.calib_images, model.input_size)
    return model, quantize_variant(model, variant, calib, _cache(args))


def cmd_export(args: argparse.Namespace) -> int:
    model = _model(args)
    _emit(args, json.dumps({"name": model.name, "onnx": str(model.path), "sha256": model.sha256,
                      "classes": model.num_classes, "anchors": model.num_anchors,
                      "batch": model.batch, "untrained": model.untrained}, indent=2))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    calib = _calibration(args, args.calib_images or 128)
    _emit(args, json.dumps({"npy": str(calib.path), "sha256": calib.sha256, "images": calib.num_images,
                      "seed": calib.seed}, indent=2))
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from .records import to_dict

    _, build = _variant_onnx(args)
    _emit(args, json.dumps(to_dict(build), indent=2))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .assets import default_eval_data
    from .backends import BuildOptions, resolve_backend
    from .cache import atomic_write_json, check_output_file
    from .dataset import CocoDataset
    from .evaluate import EvalSpec, evaluate
    from .records import to_dict

    if args.json:  # checked before the evaluation, which may take minutes
        check_output_file(args.json, what="--json file")
    model, build = _variant_onnx(args)
    onnx_path = Path(build.onnx_path) if build else model.path
    backend_cls, fallback = resolve_backend(args.backend)
    if fallback:
        logging.getLogger("quantbench").warning("TensorRT not used (%s): using ONNX Runtime.", fallback)
    backend = backend_cls()
    dataset = CocoDataset.load(Path(args.data) if args.data else default_eval_data(), limit=args.limit)
    try:
        engine = backend.build(onnx_path, BuildOptions(batch_sizes=(args.batch_size,)), _cache(args))
        with backend.open(engine) as runner:
            spec = EvalSpec(model.name, args.variant or "base", batch_size=args.batch_size, untrained=model.untrained,
                            imgsz=model.input_size)
            result = evaluate(runner, dataset, spec, progress=not args.quiet)
    except BackendError as exc:  # its message names a cache file: say which variant that is
        raise type(exc)(f"{backend.kind.value} cannot run variant {args.variant or 'base'!r} of model "
                        f"{model.name}: {exc}") from None
    m, t = result.metrics, result.timing
    note = "  (untrained model: random weights, this mAP means nothing)" if result.untrained else ""
    _emit(args, f"{result.model} {result.variant} on {result.backend}: mAP50-95 {m.map50_95:.4f}  "
          f"mAP50 {m.map50:.4f}  over {result.num_images} images{note}")
    if result.skipped_images:
        _emit(args, f"skipped {len(result.skipped_images)} unreadable images: {', '.join(result.skipped_images[:5])}")
    _emit(args, f"inference {t.inference_s:.2f} s, total {t.total_s:.2f} s ({t.images_per_s:.1f} images/s)")
    if args.json:
        try:  # the results are printed first: a folder that broke since the start loses nothing measured
            atomic_write_json(args.json, to_dict(result))
        except OSError as exc:
            raise OutputError(f"could not write --json file {args.json} ({exc.strerror or exc}); the result "
                              "is printed above, pass a --json path you can write to.") from None
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from .report import format_selection_table, write_report
    from .benchmark_json import failures_from_benchmark_json, records_from_benchmark_json
    from .selection import select
    from .thresholds import Thresholds

    from .results_store import RunLedger

    ledgers = [Path(p) for p in args.json_files if Path(p).is_dir()]
    files = [Path(p) for p in args.json_files if not Path(p).is_dir()]
    evals, latencies, options = records_from_benchmark_json(files) if files else ([], [], {})
    failures = failures_from_benchmark_json(files)
    timed = {(r.model, r.variant) for r in latencies}
    failures = {k: why for k, why in failures.items() if k not in timed}  # a later file timed it after all
    for folder in ledgers:  # a bench run's records kept in the cache (its report could not be written)
        records = RunLedger(folder).read()
        if not (records.evals or records.latencies or records.failures):
            raise ConfigError(f"{folder} holds no quantbench run records; pass a benchmark JSON or a kept run folder.")
        evals += records.evals
        latencies += records.latencies
        options.update(records.variant_options)
        failures.update(records.failures)
    thresholds = Thresholds.load(_table_path(args.thresholds, Path("thresholds.toml"), "--thresholds", "thresholds file"))
    for warning in thresholds.check_models(sorted({r.model for r in (*evals, *latencies)})):
        print(f"quantbench: warning: {warning}", file=sys.stderr)
    selections = select(evals, latencies, thresholds, reference_batch=args.reference_batch,
                        variant_options=options, failures=failures)
    for selection in selections:
        _emit(args, format_selection_table(selection))
    if args.report_dir:
        paths = write_report(selections, Path(args.report_dir),
                             rebuild_command=shlex.join(["quantbench", *args.argv]))
        _emit(args, "wrote " + ", ".join(str(p) for p in paths.values()))
    return 0 if all(s.winner for s in selections) else 1


def cmd_history(args: argparse.Namespace) -> int:
    from .history import build_history, history_markdown, load_runs, write_history
    from .thresholds import Thresholds

    thresholds = Thresholds.load(Path(args.thresholds))
    runs = load_runs([Path(p) for p in args.runs])
    histories = build_history(runs, thresholds, reference_batch=args.reference_batch, mix=args.mix)
    _emit(args, history_markdown(histories))
    paths = write_history(histories, Path(args.out_dir))
    _emit(args, "wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .cache import atomic_write_text
    from .compare import compare_runs, comparison_markdown
    from .history import load_run
    from .thresholds import Thresholds

    thresholds = Thresholds.load(Path(args.thresholds))
    comparison = compare_runs(load_run(Path(args.base)), load_run(Path(args.new)), thresholds, args.fail_latency or ())
    markdown = comparison_markdown(comparison)
    _emit(args, markdown)
    if args.markdown:
        _emit(args, f"wrote {atomic_write_text(args.markdown, markdown)}")
    return 1 if comparison.failed else 0


def cmd_provenance(args: argparse.Namespace) -> int:
    from .provenance import cache_key, collect_provenance
    from .records import to_dict

    if args.cache_key or args.device_key:
        _emit(args, cache_key(tensorrt=args.cache_key))
    else:
        _emit(args, json.dumps(to_dict(collect_provenance()), indent=2))
    return 0


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from .sensitivity import run_sensitivity

    options = _analysis_options(args)  # checked before anything is resolved or built
    report = run_sensitivity(**_stage_kwargs(args), options=options, progress=not args.quiet)
    _emit(args, f"{report.num_groups} quantized layer groups of {report.model}, most sensitive first:")
    for group in report.groups[:10]:
        _emit(args, f"  {group.name}")
    _emit(args, "wrote " + ", ".join(report.files.values()))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from .search import SearchConfig, run_search

    # Both checked before anything is resolved or built.
    options = _analysis_options(args, variant_name=args.variant_name)
    config = SearchConfig(strategy=args.strategy, min_int8_flop_share=args.min_int8_flop_share,
                          max_steps=args.max_steps, **({"max_verify": 0} if args.no_verify else {}))
    result = run_search(**_stage_kwargs(args), budget=args.budget, thresholds=Path(args.thresholds),
                        options=options, config=config, progress=not args.quiet)
    o = result.outcome
    verdict = "within" if o.met_budget else "NOT within"
    _emit(args, f"{result.variant_name}: {len(o.excluded)} layer groups kept out of INT8, "
          f"{100 * o.int8_flop_share:.1f} % of linear-op FLOPs INT8; {verdict} the budget on {result.probe}.")
    _emit(args, result.variant_toml)
    _emit(args, "wrote " + ", ".join(result.files.values()))
    return 0 if o.met_budget else 1


def _analysis_options(args: argparse.Namespace, **extra):
    from .sensitivity import AnalysisOptions

    return AnalysisOptions(
        calibration_method=args.calibration_method, calib_images=args.calib_images, seed=args.seed,
        imgsz=args.imgsz, probe_images=args.probe_images, proxy_images=args.proxy_images, top_k=args.top_k,
        groups=args.groups, batch_size=args.batch_size, **extra,
    )


def _stage_kwargs(args: argparse.Namespace) -> dict:
    from .assets import default_calib_data, default_model

    calib = Path(args.calib_data) if args.calib_data else default_calib_data()
    return {
        # The source as given: the analysis resolves (exports) it at --imgsz.
        "model": args.model or default_model(),
        "calib_folder": calib,
        "probe_folder": Path(args.probe_data) if args.probe_data else calib,
        "out_dir": Path(args.out_dir),
        "cache": _cache(args),
    }


def _analysis_opts(p: argparse.ArgumentParser, out_dir: str) -> None:
    """The options of `sensitivity` and `search`; defaults as in `sensitivity.AnalysisOptions`."""
    p.add_argument("--calib-data", help="calibration images (default: calib500 or a COCO subset)")
    p.add_argument("--probe-data", help="COCO folder for probe mAP, disjoint from the evaluation data "
                   "(default: the calibration folder; its calibration images are left out of the probe)")
    p.add_argument("--calibration-method", default="entropy", choices=("max", "entropy"))
    p.add_argument("--calib-images", type=positive_int, default=128)
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed for choosing calibration images")
    p.add_argument("--imgsz", type=positive_int, default=640, help="model input side (a multiple of 32)")
    p.add_argument("--probe-images", type=positive_int, default=200, help="images the probe mAP is measured on")
    p.add_argument("--proxy-images", type=positive_int, default=16,
                   help="calibration images the output proxies (SQNR, cosine vs FP32) run on")
    p.add_argument("--top-k", type=non_negative_int, default=12,
                   help="best-ranked groups whose probe mAP is measured (0: proxies only)")
    p.add_argument("--groups", nargs="+", action="extend", metavar="NODE",
                   help="analyse only these layer groups (node names, as in sensitivity.csv)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="ONNX Runtime batch for proxies and probes")
    p.add_argument("--out-dir", default=out_dir)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model source: .onnx, .pt or .yaml (default: yolo11n.pt, or the "
                   "offline yolo11n-coco.onnx when QUANTBENCH_ASSETS is set)")
    p.add_argument("--cache-dir", type=Path, help="artefact cache (default: ~/.cache/quantbench)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _variant_opts(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    p.add_argument("--variant", required=required, help="variant name from the variants table"
                   + ("" if required else " (default: the base model)"))
    p.add_argument("--variants-file", help="variant table (default: bench/variants.toml here or in the checkout)")
    p.add_argument("--calib-data", help="calibration images: a COCO folder or a folder of images")
    p.add_argument("--calib-images", type=positive_int, help="number of calibration images")
    p.add_argument("--seed", type=int, default=0, help="seed for choosing calibration images")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quantbench", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"quantbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="resolve a model source to a validated ONNX (cached)")
    _common(p)
    p.add_argument("--batch", type=positive_int, help="fix the batch axis to this size")
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("calibrate", help="build the calibration tensor (cached .npy)")
    _common(p)
    p.add_argument("--calib-data", help="calibration images: a COCO folder or a folder of images")
    p.add_argument("--calib-images", type=positive_int, help="number of images (default 128)")
    p.add_argument("--seed", type=int, default=0)
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
    p.add_argument("--backend", default="auto", help="auto (TensorRT when installed with a GPU, else ONNX Runtime), onnxruntime or tensorrt")
    p.add_argument("--json", type=Path, help="write the result record here")
    p.set_defaults(handler=cmd_eval)

    p = sub.add_parser("select", help="rank saved pytest-benchmark JSON runs and name the winner")
    p.add_argument("json_files", nargs="+", help="pytest-benchmark --benchmark-json files, or run folders a bench "
                   "session kept in its cache (<cache>/runs/<id>) when it could not write its report")
    p.add_argument("--thresholds", help="pass/fail criteria (default: thresholds.toml here or in the checkout)")
    p.add_argument("--reference-batch", type=positive_int, default=1)
    p.add_argument("--report-dir", help="also write report.md, selection.json and pareto.png here")
    p.set_defaults(handler=cmd_select)

    p = sub.add_parser("history", help="mAP and latency per variant over saved runs: a table and a PNG per model")
    p.add_argument("runs", nargs="+", help="pytest-benchmark --benchmark-json files, or --benchmark-storage folders")
    p.add_argument("--thresholds", default="thresholds.toml", help="criteria that name each run's winner")
    p.add_argument("--reference-batch", type=positive_int, default=1)
    p.add_argument("--out-dir", default="reports/history", help="where history.md and history-<model>.png go")
    p.add_argument("--mix", action="store_true",
                   help="draw runs on different devices or backends as one line (refused without it)")
    p.set_defaults(handler=cmd_history)

    p = sub.add_parser("compare", help="gate a run against a saved one: latency regressions and mAP changes; "
                       "exit status 1 when one is beyond its limit")
    p.add_argument("base", help="the saved run to compare against (pytest-benchmark JSON)")
    p.add_argument("new", help="the run to gate (pytest-benchmark JSON)")
    p.add_argument("--thresholds", default="thresholds.toml",
                   help="mAP50-95 budget per model: a change beyond max_abs_drop or max_rel_drop fails")
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

    p = sub.add_parser("sensitivity", help="per-layer INT8 sensitivity report (Markdown, CSV, PNG)")
    _common(p)
    _analysis_opts(p, "reports/sensitivity")
    p.set_defaults(handler=cmd_sensitivity)

    p = sub.add_parser("search", help="find the FP16/INT8 split that fits the mAP budget (resumable); "
                       "exit status 1 when the budget is not met")
    _common(p)
    _analysis_opts(p, "reports/search")
    p.add_argument("--budget", type=float, help="max mAP50-95 drop vs FP32 as a fraction (default: thresholds.toml)")
    p.add_argument("--thresholds", default="thresholds.toml", help="where the budget comes from without --budget")
    p.add_argument("--variant-name", default="int8-auto", help="name of the emitted variant")
    p.add_argument("--min-int8-flop-share", type=float, default=0.85,
                   help="keep at least this share of linear-op FLOPs in INT8 (default 0.85)")
    p.add_argument("--strategy", choices=("bisect", "greedy"), default="bisect",
                   help="bisect: few probe runs; greedy: one group at a time (a full accuracy curve)")
    p.add_argument("--max-steps", type=positive_int, default=40, help="probe evaluations, all phases together")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the real ModelOpt build of the found split (the verdict is the simulation's)")
    p.set_defaults(handler=cmd_search)
    return parser


def _quiet_echoes() -> None:
    """ModelOpt prints its log lines itself: the root handler does not print them a second time."""
    from .quantize import ModelOptEcho

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
