"""Is a derived INT8 variant the same as ModelOpt's own build of it? (a development tool, issue 21)

    QUANTBENCH_ASSETS=/work/shared/assets python tools/shared_calibration_check.py \\
        [--models yolov5n-coco yolo11n-coco] [--calib-images 64] [--eval-images 100] [--cache-dir DIR]

For every INT8 variant of the default variant table that applies to each model: ModelOpt's own
build of the variant (calibrated for it alone) and the build derived from the shared calibration
(`quantbench.build.shared_calibration`), both through the one `Pipeline` (calibration on the CPU
EP), compared node by node (`compare_qdq`) and evaluated on the first ``--eval-images`` images of
coco/val500 with ONNX Runtime on the CPU. A variant the pipeline keeps on its own ModelOpt build
because its exclusions change ModelOpt's fusion (`fusion_conflicts`) is also derived here by force,
to show what the detection prevents ("forced" rows). Prints one markdown table row per variant and
the first differences of any variant whose placement differs. Exits 1 when a derived variant differs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from quantbench.build.quantize import _excluded_nodes
from quantbench.build.shared_calibration import (
    calibration_variant,
    compare_qdq,
    derive,
    fusion_conflicts,
    load,
    own_calibration_reason,
)
from quantbench.build.variants import VariantKind, load_variants
from quantbench.cache import ArtifactCache
from quantbench.pipeline import Pipeline, PipelineSettings

ROOT = Path(__file__).resolve().parent.parent


def _evaluate_model(pipeline: Pipeline, model, variant, graph) -> float:
    """mAP50-95 of an ONNX that is no pipeline build (the forced derivation), as the pipeline evaluates."""
    import tempfile

    import onnx

    from quantbench.evaluation.evaluate import EvalSpec, evaluate_with_matches

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "forced.onnx"
        onnx.save(graph, str(path))
        engine = pipeline.backend.build(path, pipeline.settings.build, pipeline.cache)
        s = pipeline.settings.evaluation
        with pipeline.open(engine) as runner:
            spec = EvalSpec(model.name, f"{variant.name}-forced", batch_size=s.batch_size, nms=s.nms,
                            untrained=model.untrained, imgsz=model.input_size)
            result, _ = evaluate_with_matches(runner, pipeline.dataset(), spec)
    return result.metrics.map50_95


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["yolov5n-coco", "yolo11n-coco"])
    parser.add_argument("--calib-images", type=int, default=64)
    parser.add_argument("--eval-images", type=int, default=100)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/qb-shared-calibration-cache"))
    parser.add_argument("--variants-file", type=Path, default=ROOT / "bench" / "variants.toml")
    args = parser.parse_args(argv)
    assets = Path(os.environ.get("QUANTBENCH_ASSETS", "/work/shared/assets"))
    cache = ArtifactCache(args.cache_dir)
    common = dict(eval_data=assets / "coco" / "val500", calib_data=assets / "coco" / "calib500",
                  eval_images=args.eval_images, calib_images=args.calib_images, backend="onnxruntime",
                  calibration_eps="cpu")
    own = Pipeline(cache, PipelineSettings(**common, shared_calibration=False))
    shared = Pipeline(cache, PipelineSettings(**common, shared_calibration=True))
    variants = [v for v in load_variants(args.variants_file) if v.kind is VariantKind.INT8]
    print(f"{args.calib_images} calibration images, {args.eval_images} val500 images, ONNX Runtime CPU\n")
    print("| model | variant | derived | placement equal | max scale difference | weights equal "
          "| mAP50-95 per-variant build | mAP50-95 derived | mAP difference | ModelOpt s | derivation s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    details: list[str] = []
    differs = False
    for name in args.models:
        model = own.model(assets / "models" / f"{name}.onnx")
        for variant in variants:
            if not variant.applies_to(model.name):
                continue
            reference = own.build(model, variant)
            derived = shared.build(model, variant)
            was_derived = "derived_from" in derived.options["calibration"]
            reason = own_calibration_reason(variant)
            map_own = own.evaluation(model, variant).metrics.map50_95
            if was_derived:
                label, seconds = "yes", derived.seconds
                cmp = compare_qdq(load(reference.onnx_path), load(derived.onnx_path))
                map_derived = shared.evaluation(model, variant).metrics.map50_95
            elif reason is not None:
                label, seconds = f"no: {reason}", 0.0
                cmp = compare_qdq(load(reference.onnx_path), load(derived.onnx_path))
                map_derived = shared.evaluation(model, variant).metrics.map50_95
            else:  # kept on its own build by fusion_conflicts: derive by force to show the difference
                base = load(model.path)
                excluded = _excluded_nodes(base, variant)
                label = f"no, own build (fusion of {', '.join(fusion_conflicts(base, excluded))}); forced:"
                calibration = calibration_variant(variant)
                if calibration is None:
                    raise SystemExit(f"{variant.name} has no shared calibration; this tool is out of date")
                source = shared.build(model, calibration)
                started = time.perf_counter()
                forced = derive(load(source.onnx_path), excluded)
                seconds = time.perf_counter() - started
                cmp = compare_qdq(load(reference.onnx_path), forced)
                map_derived = _evaluate_model(shared, model, variant, forced)
            differs |= was_derived and not cmp.equal
            print(f"| {model.name} | {variant.name} | {label} "
                  f"| {'yes' if cmp.placement_equal else 'NO'} | {cmp.max_scale_difference:.3g} "
                  f"| {'yes' if cmp.weights_equal else 'NO'} | {map_own:.6f} | {map_derived:.6f} "
                  f"| {map_derived - map_own:+.2g} | {reference.seconds:.1f} | {seconds:.2f} |", flush=True)
            if not cmp.equal:
                details.append(f"{model.name}/{variant.name}:\n  " + "\n  ".join(cmp.differences))
    for text in details:
        print("\n" + text)
    return 1 if differs else 0


if __name__ == "__main__":
    sys.exit(main())
