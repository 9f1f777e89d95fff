"""Print docs/results.md's accuracy table from a saved bench run (pytest-benchmark JSON).

    python tools/results_table.py reports/benchmark.json [--reference-batch 1]

Reads the records that `pytest bench` stores in each latency row's ``extra_info["quantbench"]``
(accuracy, build) -- the same data `quantbench select` reads -- and adds, per variant, the share of
the model's linear-op (Conv, MatMul) FLOPs whose inputs are quantized, computed from the variant
ONNX in the artefact cache. One Markdown table per model, variants in the order of the run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import onnx

from quantbench.build.qdq_graph import QdqModel
from quantbench.errors import ModelError


def int8_flop_share(onnx_path: str, input_size: int = 640) -> float | None:
    """Share of linear-op FLOPs that run INT8 in a Q/DQ ONNX; 0.0 for a graph with no Q/DQ; None when gone."""
    path = Path(onnx_path)
    if not path.is_file():
        return None
    try:
        qdq = QdqModel(onnx.load(str(path)), source=str(path), input_size=input_size)
    except ModelError:  # no Q/DQ pairs: an FP32 or FP16 graph
        return 0.0
    return qdq.int8_flop_share(excluded=())


def rows_by_model(benchmark_json: Path, reference_batch: int) -> dict[str, list[dict]]:
    data = json.loads(benchmark_json.read_text())
    models: dict[str, list[dict]] = {}
    for bench in data.get("benchmarks", []):
        info = (bench.get("extra_info") or {}).get("quantbench")
        if not info or info["latency"]["batch_size"] != reference_batch or info.get("eval") is None:
            continue
        models.setdefault(info["eval"]["model"], []).append(info)
    return models


def table(rows: list[dict]) -> list[str]:
    by_variant = {row["eval"]["variant"]: row for row in rows}

    def drop(row: dict, reference: str) -> str:
        if reference not in by_variant:
            return "-"
        return f"{100 * (by_variant[reference]['eval']['metrics']['map50_95'] - row['eval']['metrics']['map50_95']):+.2f}"

    lines = ["| variant | mAP50-95 | mAP50 | AP small | AP medium | AP large | drop vs fp32 (pt) | drop vs fp16 (pt) "
             "| INT8 share of linear-op FLOPs | nodes kept out of INT8 | quantize time (s) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        m, build = row["eval"]["metrics"], row["build"]
        share = int8_flop_share(build["onnx_path"]) if build["kind"] == "int8" else 0.0
        share_text = "?" if share is None else f"{100 * share:.1f} %"
        seconds = f"{build['seconds']:.0f}" if build["kind"] != "fp32" else "-"
        lines.append(
            f"| {row['eval']['variant']} | {m['map50_95']:.4f} | {m['map50']:.4f} | {m['map_small']:.4f} | "
            f"{m['map_medium']:.4f} | {m['map_large']:.4f} | {drop(row, 'fp32')} | {drop(row, 'fp16')} | {share_text} | "
            f"{len(build['excluded_nodes'])} | {seconds} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmark_json", type=Path)
    parser.add_argument("--reference-batch", type=int, default=1)
    args = parser.parse_args(argv)
    if not args.benchmark_json.is_file():
        print(f"{args.benchmark_json} does not exist; pass the file `pytest bench --benchmark-json` wrote.",
              file=sys.stderr)
        return 2
    models = rows_by_model(args.benchmark_json, args.reference_batch)
    if not models:
        print(f"{args.benchmark_json} holds no quantbench latency rows at batch {args.reference_batch}.", file=sys.stderr)
        return 2
    for model, rows in models.items():
        n = rows[0]["eval"]["num_images"]
        print(f"### {model} ({rows[0]['eval']['dataset']}, {n} images, {rows[0]['eval']['backend']})\n")
        print("\n".join(table(rows)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
