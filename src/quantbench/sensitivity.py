"""Per-layer INT8 sensitivity of a ModelOpt Q/DQ variant, measured on the CPU.

For every quantized layer group (`qdq_graph.LayerGroup`) two graphs are derived from the one
calibrated INT8 ONNX, with no re-calibration:

* *only*: the high-precision graph with only this group in INT8;
* *bypass*: the full INT8 graph with only this group in high precision.

Each runs on a few calibration images and is compared with the FP32 model's raw output, computed
once: SQNR in dB and cosine similarity of the whole output, plus the SQNR of the class-score rows
alone (the raw output's box rows are in pixels and dominate the whole-output SQNR). Groups are
ranked by the class-score error power they cause alone: those lone errors add up to the full
INT8 graph's error, so they say what taking any *set* of groups out of INT8 removes. The top
groups also get a real probe score (mAP50-95 with the group bypassed, on a probe split disjoint
from the evaluation data). Every measurement is cached by content, so an interrupted analysis
resumes where it stopped. The ranked table is written as Markdown and CSV, with a bar chart.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import tempfile
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
from tqdm import tqdm

from .backends.base import BuildOptions
from .backends.ort import OrtBackend
from .cache import ArtifactCache, atomic_write_bytes, atomic_write_text, hash_key, sha256_file
from .dataset import CocoDataset
from .detections import NmsConfig
from .errors import ConfigError, DataError
from .qdq_graph import QdqModel
from .variants import VARIANT_NAME_RE  # an emitted variant must load back from variants.toml
from .variants import CALIBRATION_METHODS, HIGH_PRECISION_DTYPES

log = logging.getLogger(__name__)

CACHE_KIND = "sensitivity"
_FORMAT_VERSION = 1  # of cached probe scores
_AGREEMENT_VERSION = 2  # of cached output agreements (2: confidence-weighted box SQNR)
_SCORE_ROW = 4  # YOLO output rows 0-3 are the box, 4.. the class scores


# ---------------------------------------------------------------------------------------------
# Output agreement with FP32 (the cheap proxies)


@dataclass(frozen=True)
class OutputAgreement:
    """How closely one graph's raw output follows the FP32 reference on the proxy images."""

    sqnr_db: float  # 10 log10(sum ref^2 / sum (out - ref)^2) over the whole raw output
    cosine: float  # mean over images of the cosine similarity of the flattened raw output
    score_sqnr_db: float  # SQNR of the class-score rows only (what NMS ranks)
    # SQNR of the box rows, each anchor weighted by its FP32 confidence (max class score): box
    # errors of anchors no detection comes from do not matter, those of confident ones decide
    # mAP at the high IoU thresholds of mAP50-95.
    box_sqnr_db: float


def _sqnr_db(signal: float, noise: float) -> float:
    if noise <= 0.0:
        return math.inf
    return 10.0 * math.log10(max(signal, 1e-30) / noise)


def _gain(after_db: float, before_db: float) -> float:
    """SQNR gained, in dB; 0 when nothing changed (both may be infinite: an exact output)."""
    return 0.0 if after_db == before_db else after_db - before_db


def output_agreement(reference: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> OutputAgreement:
    """Proxies of ``outputs`` against ``reference``: equal-shaped batches, in the same order."""
    signal = noise = score_signal = score_noise = box_signal = box_noise = 0.0
    cosines: list[float] = []
    for ref, out in zip(reference, outputs, strict=True):
        ref = ref.astype(np.float64, copy=False)
        err = out.astype(np.float64) - ref
        signal += float(np.square(ref).sum())
        noise += float(np.square(err).sum())
        if ref.ndim == 3 and ref.shape[1] > _SCORE_ROW:
            score_signal += float(np.square(ref[:, _SCORE_ROW:]).sum())
            score_noise += float(np.square(err[:, _SCORE_ROW:]).sum())
            confidence = ref[:, _SCORE_ROW:].max(axis=1)  # (batch, anchors)
            box_signal += float((np.square(ref[:, :_SCORE_ROW]).sum(axis=1) * confidence).sum())
            box_noise += float((np.square(err[:, :_SCORE_ROW]).sum(axis=1) * confidence).sum())
        flat_ref = ref.reshape(len(ref), -1)
        flat_out = out.reshape(len(out), -1).astype(np.float64)
        norms = np.linalg.norm(flat_ref, axis=1) * np.linalg.norm(flat_out, axis=1)
        cosines.extend((np.einsum("ij,ij->i", flat_ref, flat_out) / np.maximum(norms, 1e-30)).tolist())
    if score_signal == 0.0 and box_signal == 0.0:  # not a YOLO output: the whole output is both
        score_signal, score_noise = box_signal, box_noise = signal, noise
    return OutputAgreement(_sqnr_db(signal, noise), float(np.mean(cosines)), _sqnr_db(score_signal, score_noise),
                           _sqnr_db(box_signal, box_noise))


# ---------------------------------------------------------------------------------------------
# Probes: a whole-model score on held-out data, higher is better


class Probe(Protocol):
    """Scores a whole model (higher is better); the accuracy the search must keep."""

    description: str  # e.g. "mAP50-95 on calib500 (probe, 200 images)"

    def fingerprint(self) -> str:
        """Changes whenever a score could change (data, settings)."""

    def score(self, onnx_path: Path) -> float: ...


class CocoProbe:
    """mAP50-95 of a model on a COCO folder subset, through ONNX Runtime and `evaluate`."""

    def __init__(self, dataset: CocoDataset, *, imgsz: int = 640, batch_size: int = 8,
                 nms: NmsConfig = NmsConfig(), threads: int | None = None):
        if len(dataset) == 0:
            raise DataError(f"probe dataset {dataset.name} has no images; give the probe at least one image.")
        self.dataset, self.imgsz, self.batch_size, self.nms = dataset, imgsz, batch_size, nms
        self.options = BuildOptions(batch_sizes=(batch_size,), threads=threads)
        self.description = f"mAP50-95 on {dataset.name} ({len(dataset)} images)"

    def fingerprint(self) -> str:
        return hash_key("coco-probe", self.dataset.fingerprint(), self.imgsz, dataclasses.asdict(self.nms))

    def score(self, onnx_path: Path) -> float:
        from .evaluate import EvalSpec, evaluate

        with OrtBackend().open_onnx(onnx_path, self.options) as runner:
            spec = EvalSpec(onnx_path.stem, "probe", batch_size=self.batch_size, nms=self.nms, imgsz=self.imgsz)
            result = evaluate(runner, self.dataset, spec)
        return result.metrics.map50_95


class OutputErrorProbe:
    """Label-free probe: minus the class-score error power relative to a reference model's output.

    ``score = -sum (out - ref)^2 / sum ref^2`` over the class rows on fixed images: 0 for the
    reference itself, so a budget reads as the relative error power allowed (1e-3 = 30 dB SQNR).
    For models whose mAP means nothing (random weights from a YAML) or data without labels.
    """

    def __init__(self, images: np.ndarray, reference_onnx: Path, *, batch_size: int = 8):
        self.images, self.batch_size = images, batch_size
        self.reference_onnx = Path(reference_onnx)
        self.description = f"-relative class-score error power vs {self.reference_onnx.name} on {len(images)} images"
        self._reference: list[np.ndarray] | None = None

    def fingerprint(self) -> str:
        return hash_key("error-probe", _array_hash(self.images), sha256_file(self.reference_onnx), self.batch_size)

    def score(self, onnx_path: Path) -> float:
        if self._reference is None:
            self._reference = run_batches(self.reference_onnx, self.images, self.batch_size)
        sqnr = output_agreement(self._reference, run_batches(onnx_path, self.images, self.batch_size)).score_sqnr_db
        return -(10.0 ** (-sqnr / 10.0))


def run_batches(onnx_path: Path, images: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Raw outputs of ``onnx_path`` (ONNX Runtime) on ``images``, one array per batch.

    Derived graphs are opened once each, so float16 QuantizeLinear nodes are repaired in memory
    (`OrtBackend.open_onnx`) rather than through `OrtBackend.build`'s cached copy: same numerics.
    """
    with OrtBackend().open_onnx(onnx_path, BuildOptions(batch_sizes=(batch_size,))) as runner:
        return [np.array(runner.infer(images[i:i + batch_size]), copy=True) for i in range(0, len(images), batch_size)]


def _array_hash(array: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(str((array.shape, array.dtype.str)).encode())
    h.update(np.ascontiguousarray(array).data)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Measuring derived graphs, cached


class GraphMeter:
    """Measures graphs derived from one Q/DQ model: output agreement and probe score, cached.

    A derived graph is named by the set of groups left INT8; its ONNX is written to a private
    scratch folder only when a measurement is not in the cache. Use as a context manager.
    """

    def __init__(self, qdq: QdqModel, cache: ArtifactCache, *, proxy_images: np.ndarray | None = None,
                 reference_onnx: Path | None = None, probe: Probe | None = None, batch_size: int = 8):
        if proxy_images is not None and reference_onnx is None:
            raise ConfigError("proxy images were given without the FP32 reference model; pass reference_onnx.")
        self.qdq, self.cache, self.probe, self.batch_size = qdq, cache, probe, batch_size
        self.proxy_images, self.reference_onnx = proxy_images, reference_onnx
        self.qdq_hash = hashlib.sha256(qdq.model.SerializeToString()).hexdigest()
        self._scratch = tempfile.TemporaryDirectory(prefix="qb-graphs-")
        self._reference: list[np.ndarray] | None = None
        self._proxy_key = (
            hash_key(_array_hash(proxy_images), sha256_file(reference_onnx), batch_size)
            if proxy_images is not None and reference_onnx is not None else None
        )
        self.measured = 0  # graphs actually run by this meter (not found in the cache)

    def __enter__(self) -> GraphMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._scratch.cleanup()

    @contextlib.contextmanager
    def _written(self, quantized: frozenset[str]) -> Iterator[Path]:
        """The derived graph as a scratch file, deleted after use (each is a full copy of the weights)."""
        path = Path(self._scratch.name) / f"{hash_key(sorted(quantized))}.onnx"
        onnx.save(self.qdq.materialize(quantized), str(path))
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)

    def _cached(self, key: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        def build(tmp: Path) -> dict[str, Any]:
            values = measure()
            tmp.write_text(json.dumps(values))  # the cache publishes it with its metadata sidecar
            return values

        meta = self.cache.get_or_build(CACHE_KIND, key, ".txt", build).meta
        return {k: v for k, v in meta.items() if k != "key"}

    def agreement(self, quantized: Collection[str]) -> OutputAgreement:
        """Proxies of the graph with only ``quantized`` groups INT8, against FP32."""
        if self._proxy_key is None:
            raise ConfigError("no proxy images were given to this meter; pass proxy_images and reference_onnx.")
        keep = self.qdq.check_names(quantized)
        key = hash_key("agreement", _AGREEMENT_VERSION, self.qdq_hash, sorted(keep), self._proxy_key)

        images, reference_onnx = self.proxy_images, self.reference_onnx
        assert images is not None and reference_onnx is not None  # _proxy_key is set only with both

        def measure() -> dict[str, Any]:
            if self._reference is None:
                self._reference = run_batches(reference_onnx, images, self.batch_size)
            self.measured += 1
            with self._written(keep) as path:
                outputs = run_batches(path, images, self.batch_size)
            return dataclasses.asdict(output_agreement(self._reference, outputs))

        return OutputAgreement(**self._cached(key, measure))

    def probe_score(self, quantized: Collection[str]) -> float:
        """The probe's score of the graph with only ``quantized`` groups INT8."""
        probe = self._require_probe()
        keep = self.qdq.check_names(quantized)
        key = hash_key("probe", _FORMAT_VERSION, self.qdq_hash, sorted(keep), probe.fingerprint())

        def measure() -> dict[str, Any]:
            self.measured += 1
            with self._written(keep) as path:
                return {"score": float(probe.score(path))}

        return float(self._cached(key, measure)["score"])

    def probe_score_of_file(self, onnx_path: Path) -> float:
        """The probe's score of any ONNX (the FP32 model, a real ModelOpt build)."""
        probe = self._require_probe()
        key = hash_key("probe-file", _FORMAT_VERSION, sha256_file(onnx_path), probe.fingerprint())

        def measure() -> dict[str, Any]:
            self.measured += 1
            return {"score": float(probe.score(Path(onnx_path)))}

        return float(self._cached(key, measure)["score"])

    def _require_probe(self) -> Probe:
        if self.probe is None:
            raise ConfigError("no probe was given to this meter; pass a probe (e.g. a CocoProbe) to score models.")
        return self.probe


# ---------------------------------------------------------------------------------------------
# The analysis


@dataclass(frozen=True)
class GroupSensitivity:
    """One layer group's sensitivity; ``rank`` 1 is the group whose INT8 error is largest."""

    rank: int
    name: str
    op_type: str
    flops: int
    flop_share: float  # of all linear-op FLOPs in the model
    # What this group's INT8 costs when it alone is INT8, as a share of the sum over all groups:
    # ``error_share`` is the mean of the class-score and the confidence-weighted box shares.
    error_share: float
    score_error_share: float
    box_error_share: float
    bypass: OutputAgreement  # full INT8 but this group in high precision
    only: OutputAgreement  # high precision but this group in INT8
    bypass_gain_db: float  # bypass.score_sqnr_db - full INT8's score_sqnr_db: what excluding it buys alone
    probe_score: float | None = None  # probe score with this group bypassed (top-k only)
    probe_gain: float | None = None  # probe_score - full INT8's probe score


@dataclass(frozen=True)
class SensitivityReport:
    model: str
    int8_onnx: str
    num_groups: int
    proxy_images: int
    full_int8: OutputAgreement
    # sum over groups of their lone error powers / the full INT8 graph's, for scores and boxes
    additivity: dict[str, float] | None
    probe: str | None  # the probe's description
    fp32_probe_score: float | None
    int8_probe_score: float | None
    groups: tuple[GroupSensitivity, ...]  # ranked
    files: dict[str, str] = field(default_factory=dict)

    @property
    def ranking(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.groups)

    def by_name(self) -> dict[str, GroupSensitivity]:
        return {g.name: g for g in self.groups}


def error_power(sqnr_db: float) -> float:
    """Error power relative to the signal, from an SQNR in dB (0 for an exact output)."""
    return 10.0 ** (-sqnr_db / 10.0)


def layer_sensitivity(
    meter: GraphMeter,
    *,
    model: str,
    top_k: int = 8,
    groups: Collection[str] | None = None,
    fp32_onnx: Path | None = None,
    progress: bool = True,
) -> SensitivityReport:
    """Measure every group (or only ``groups``) of ``meter.qdq``; probe the ``top_k`` highest ranked.

    Ranking: by the error each group causes when it alone is INT8, as its share of the sum over all
    groups, averaged over the class scores and the confidence-weighted boxes. These lone errors
    add up: on yolov5n their sums are within 10 % of the full INT8 graph's errors
    (``additivity``), so the shares predict what excluding a *set* of groups removes, which
    single-group bypass gains (measured against an already noisy graph) do not. Ties (outputs no
    group changes, as with random weights) go by the whole output.
    """
    qdq = meter.qdq
    names = list(qdq.group_names if groups is None else qdq.check_names(groups))
    names.sort(key=qdq.group_names.index)  # graph order, whatever order ``groups`` came in
    if top_k < 0:
        raise ConfigError(f"top_k={top_k} is negative; pass 0 (no probing) or more.")
    all_groups = frozenset(qdq.group_names)
    full = meter.agreement(all_groups)
    bar = tqdm(total=2 * len(names), desc="sensitivity", unit="graph", disable=not progress)
    bypass: dict[str, OutputAgreement] = {}
    only: dict[str, OutputAgreement] = {}
    with bar:
        for name in names:
            bar.set_postfix_str(name[-40:], refresh=False)
            only[name] = meter.agreement({name})
            bar.update()
            bypass[name] = meter.agreement(all_groups - {name})
            bar.update()

    shares: dict[str, dict[str, float]] = {}
    additivity: dict[str, float] | None = {} if groups is None else None
    for part in ("score", "box"):
        errors = {n: error_power(getattr(only[n], f"{part}_sqnr_db")) for n in names}
        total = sum(errors.values())
        shares[part] = {n: errors[n] / total if total > 0 else 0.0 for n in names}
        full_error = error_power(getattr(full, f"{part}_sqnr_db"))
        if additivity is not None and full_error > 0:
            additivity[part] = total / full_error
    share = {n: (shares["score"][n] + shares["box"][n]) / 2 for n in names}
    ranked_names = sorted(names, key=lambda n: (-share[n], -error_power(only[n].sqnr_db)))

    probe_scores: dict[str, float] = {}
    fp32_score = int8_score = None
    if meter.probe is not None and top_k > 0:
        int8_score = meter.probe_score(all_groups)
        fp32_score = meter.probe_score_of_file(fp32_onnx) if fp32_onnx is not None else None
        for name in tqdm(ranked_names[:top_k], desc="probe mAP", unit="graph", disable=not progress):
            probe_scores[name] = meter.probe_score(all_groups - {name})

    total_flops = qdq.linear_flops_total or 1
    ranked = []
    for rank, name in enumerate(ranked_names, start=1):
        group = qdq.group(name)
        score = probe_scores.get(name)
        ranked.append(GroupSensitivity(
            rank=rank, name=name, op_type=group.op_type, flops=group.flops,
            flop_share=group.flops / total_flops if group.is_linear else 0.0,
            error_share=share[name], score_error_share=shares["score"][name], box_error_share=shares["box"][name],
            bypass=bypass[name], only=only[name],
            bypass_gain_db=_gain(bypass[name].score_sqnr_db, full.score_sqnr_db),
            probe_score=score, probe_gain=None if score is None or int8_score is None else score - int8_score,
        ))
    return SensitivityReport(
        model=model, int8_onnx=qdq.source, num_groups=len(qdq.groups),
        proxy_images=0 if meter.proxy_images is None else len(meter.proxy_images),
        full_int8=full, additivity=additivity, probe=None if meter.probe is None else meter.probe.description,
        fp32_probe_score=fp32_score, int8_probe_score=int8_score, groups=tuple(ranked),
    )


# ---------------------------------------------------------------------------------------------
# Output files

_CSV_COLUMNS = (
    "rank", "group", "op_type", "flops", "flop_share", "error_share", "score_error_share", "box_error_share",
    "only_score_sqnr_db", "only_box_sqnr_db", "only_sqnr_db", "only_cosine", "bypass_score_sqnr_db",
    "bypass_box_sqnr_db", "bypass_sqnr_db", "bypass_cosine", "bypass_gain_db", "probe_score", "probe_gain",
)


def _csv_row(g: GroupSensitivity) -> tuple[Any, ...]:
    return (g.rank, g.name, g.op_type, g.flops, g.flop_share, g.error_share, g.score_error_share,
            g.box_error_share, g.only.score_sqnr_db, g.only.box_sqnr_db, g.only.sqnr_db, g.only.cosine,
            g.bypass.score_sqnr_db, g.bypass.box_sqnr_db, g.bypass.sqnr_db, g.bypass.cosine, g.bypass_gain_db,
            g.probe_score, g.probe_gain)


def sensitivity_csv(report: SensitivityReport) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(_CSV_COLUMNS)
    for g in report.groups:
        writer.writerow(["" if v is None else v for v in _csv_row(g)])
    return buf.getvalue()


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def sensitivity_markdown(report: SensitivityReport) -> str:
    lines = [
        f"# INT8 sensitivity of {report.model}",
        "",
        f"- INT8 graph: `{report.int8_onnx}` ({report.num_groups} quantized layer groups)",
        f"- Proxies on {report.proxy_images} calibration images against FP32: full INT8 SQNR "
        f"{report.full_int8.sqnr_db:.2f} dB, class-score SQNR {report.full_int8.score_sqnr_db:.2f} dB, "
        f"confidence-weighted box SQNR {report.full_int8.box_sqnr_db:.2f} dB, cosine {report.full_int8.cosine:.6f}",
    ]
    if report.additivity:
        parts = ", ".join(f"{part} {100 * ratio:.0f} %" for part, ratio in report.additivity.items())
        lines.append(f"- Additivity: the groups' lone errors sum to this much of the full INT8 graph's: {parts}")
    if report.probe is not None:
        lines.append(f"- Probe: {report.probe}; FP32 {_fmt(report.fp32_probe_score, '.4f')}, "
                     f"full INT8 {_fmt(report.int8_probe_score, '.4f')}")
    lines += [
        "",
        "*only*: high precision with only this group INT8; error % = its share of the summed lone errors, mean of "
        "the class-score share and the confidence-weighted box share (the ranking); *bypass*: full INT8 with only "
        "this group in high precision (gain: class-score SQNR gained); *probe*: probe score with this group "
        "bypassed (top groups only).",
        "",
        "| rank | group | op | GFLOPs | FLOP % | error % | score % | box % | only score SQNR dB | only box SQNR dB | "
        "bypass gain dB | probe | probe gain |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for g in report.groups:
        lines.append(
            f"| {g.rank} | `{g.name}` | {g.op_type} | {g.flops / 1e9:.3f} | {100 * g.flop_share:.1f} | "
            f"{100 * g.error_share:.1f} | {100 * g.score_error_share:.1f} | {100 * g.box_error_share:.1f} | "
            f"{g.only.score_sqnr_db:.2f} | {g.only.box_sqnr_db:.2f} | {g.bypass_gain_db:+.2f} | "
            f"{_fmt(g.probe_score, '.4f')} | {_fmt(g.probe_gain, '+.4f')} |"
        )
    return "\n".join(lines) + "\n"


def sensitivity_chart(report: SensitivityReport, path: Path, *, top: int = 30) -> Path:
    """Bar chart of the ``top`` ranked groups: error share, and probe gain where probed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = report.groups[:top]
    labels = [f"{g.rank}. {g.name[-48:]}" for g in shown][::-1]
    fig, axes = plt.subplots(1, 2, figsize=(14, 0.32 * len(shown) + 1.6), sharey=True)
    axes[0].barh(labels, [100 * g.error_share for g in shown][::-1], color="tab:blue")
    axes[0].set_xlabel("share of the INT8 error caused by the group alone (%, scores and boxes)")
    probe_gain = [0.0 if g.probe_gain is None else 100 * g.probe_gain for g in shown][::-1]
    colors = ["tab:gray" if g.probe_gain is None else "tab:green" for g in shown][::-1]
    axes[1].barh(labels, probe_gain, color=colors)
    axes[1].set_xlabel("probe mAP50-95 gained when kept in high precision (points; gray: not probed)")
    fig.suptitle(f"INT8 sensitivity of {report.model} ({report.num_groups} layer groups, top {len(shown)})")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def write_sensitivity(report: SensitivityReport, out_dir: Path) -> SensitivityReport:
    """Write sensitivity.md, sensitivity.csv and sensitivity.png; the report with their paths."""
    out_dir = Path(out_dir)
    files = {
        "markdown": atomic_write_text(out_dir / "sensitivity.md", sensitivity_markdown(report)),
        "csv": atomic_write_text(out_dir / "sensitivity.csv", sensitivity_csv(report)),
        "chart": sensitivity_chart(report, out_dir / "sensitivity.png"),
    }
    return dataclasses.replace(report, files={k: str(v) for k, v in files.items()})


# ---------------------------------------------------------------------------------------------
# Library entry points (what `quantbench sensitivity` and `quantbench search` call)


def _count_problem(value: Any, least: int) -> bool:
    return isinstance(value, bool) or not isinstance(value, int) or value < least


@dataclass(frozen=True)
class AnalysisOptions:
    """How a model's INT8 build is analysed: shared by `prepare_analysis`, `run_sensitivity` and
    `search.run_search` (the search's own knobs are `search.SearchConfig`).

    Checked on construction: a bad value raises `ConfigError` naming the field and the fix.
    """

    calibration_method: str = "entropy"  # ModelOpt's INT8 calibrator: entropy or max
    calib_images: int = 128  # calibration images, a seeded choice from the calibration folder
    seed: int = 0  # which calibration images
    imgsz: int = 640  # the model's square input side
    probe_images: int = 200  # probe split: images of the probe folder that are not calibration images
    proxy_images: int = 16  # calibration images the output proxies (SQNR, cosine vs FP32) run on
    top_k: int = 12  # best-ranked groups that also get a probe score (0: proxies only)
    groups: tuple[str, ...] | None = None  # analyse only these layer groups (node names); None: all
    # Outside INT8 the *emitted* variant keeps this; the analysis graph always uses FP32 (see
    # `prepare_analysis`).
    high_precision_dtype: str = "fp16"
    variant_name: str = "int8-auto"  # name of the variant a search emits
    batch_size: int = 8  # ONNX Runtime batch for proxies and probes

    def __post_init__(self) -> None:
        if self.calibration_method not in CALIBRATION_METHODS:
            raise ConfigError(f"calibration_method={self.calibration_method!r} is not one of "
                              f"{', '.join(CALIBRATION_METHODS)}; use entropy or max.")
        if self.high_precision_dtype not in HIGH_PRECISION_DTYPES:
            raise ConfigError(f"high_precision_dtype={self.high_precision_dtype!r} is not one of "
                              f"{', '.join(HIGH_PRECISION_DTYPES)}; use fp16 (what TensorRT deploys).")
        for name, least, example in (("calib_images", 1, 128), ("probe_images", 1, 200), ("proxy_images", 1, 16),
                                     ("batch_size", 1, 8), ("top_k", 0, 12), ("seed", 0, 0)):
            value = getattr(self, name)
            if _count_problem(value, least):
                kind = "a positive" if least else "a non-negative"
                raise ConfigError(f"{name}={value!r} is not {kind} whole number; pass e.g. {example}.")
        if _count_problem(self.imgsz, 32) or self.imgsz % 32:
            raise ConfigError(f"imgsz={self.imgsz!r} is not a positive multiple of 32; pass e.g. 640.")
        if not isinstance(self.variant_name, str) or not VARIANT_NAME_RE.match(self.variant_name):
            raise ConfigError(f"variant_name={self.variant_name!r} is not a valid variant name; use letters, "
                              "digits, '.', '_' and '-', e.g. int8-auto.")
        if self.groups is not None:
            if isinstance(self.groups, str):
                raise ConfigError(f"groups={self.groups!r} is one string; pass a list of layer group names.")
            groups = tuple(self.groups)
            if not groups or not all(isinstance(g, str) for g in groups):
                raise ConfigError(f"groups={groups!r} names no layer group; pass node names, or None for all groups.")
            object.__setattr__(self, "groups", groups)


@dataclass(frozen=True)
class AnalysisSetup:
    """Everything a sensitivity analysis or a split search works on, built (or found) in the cache."""

    options: AnalysisOptions
    model: Any  # export.ModelInfo: the FP32 model, also the proxies' reference
    template: Any  # variants.Variant: the INT8 variant analysed (calibration method, images, dtype)
    calib: Any  # calibration.CalibrationSet
    int8: Any  # records.VariantBuild of the analysis graph: the template with FP32 outside INT8
    probe_dataset: CocoDataset | None
    proxy_images: np.ndarray


def probe_split(probe_folder: Path, calib: Any, calib_images_dir: Path, probe_images: int) -> CocoDataset:
    """The first ``probe_images`` images (by id) of ``probe_folder`` that are not calibration images."""
    dataset = CocoDataset.load(Path(probe_folder))
    calibration = {(calib_images_dir / name).resolve() for name in calib.files}
    keep = [i for i, f in enumerate(dataset.files) if f.resolve() not in calibration][:probe_images]
    if not keep:
        raise DataError(
            f"every image of {probe_folder} is a calibration image; give a probe folder with other images or "
            "calibrate on fewer images."
        )
    return dataclasses.replace(
        dataset, name=f"{dataset.name}-probe{len(keep)}",
        image_ids=tuple(dataset.image_ids[i] for i in keep), files=tuple(dataset.files[i] for i in keep),
    )


def prepare_analysis(
    model: str | Path,
    calib_folder: Path,
    probe_folder: Path | None,
    cache: ArtifactCache,
    options: AnalysisOptions = AnalysisOptions(),
) -> AnalysisSetup:
    """Resolve the model, calibrate, build the INT8 analysis graph, pick the probe and proxy images.

    The analysis graph is the template variant with FP32 (not ``options.high_precision_dtype``)
    outside INT8: ONNX Runtime runs it faster on the CPU, and with every group bypassed it is
    exactly the FP32 model, so the proxies measure INT8 error alone. The emitted variant keeps the
    dtype asked for, and a search verifies its split in that dtype.
    """
    from .calibration import build_calibration, calibration_images
    from .export import resolve_model
    from .quantize import quantize_variant
    from .variants import Variant, VariantKind

    o = options
    info = resolve_model(model, cache, imgsz=o.imgsz)
    calib = build_calibration(Path(calib_folder), o.calib_images, cache=cache, seed=o.seed, size=info.input_size)
    template = Variant(name=o.variant_name, kind=VariantKind.INT8, calibration_method=o.calibration_method,
                       calib_images=o.calib_images, high_precision_dtype=o.high_precision_dtype)
    analysis = dataclasses.replace(template, name=f"{o.variant_name}-analysis", high_precision_dtype="fp32")
    int8 = quantize_variant(info, analysis, calib, cache)
    probe_dataset = None
    if probe_folder is not None:
        images_dir, _ = calibration_images(Path(calib_folder))
        probe_dataset = probe_split(Path(probe_folder), calib, images_dir, o.probe_images)
    stored = np.load(calib.path, mmap_mode="r")  # the whole tensor is ~600 MB for 128 images
    proxies = np.array(stored[: min(o.proxy_images, len(stored))], dtype=np.float32)
    return AnalysisSetup(o, info, template, calib, int8, probe_dataset, proxies)


def open_meter(setup: AnalysisSetup, cache: ArtifactCache) -> tuple[QdqModel, GraphMeter]:
    """The analysis graph parsed, and a meter with the setup's proxies and COCO probe."""
    qdq = QdqModel.load(Path(setup.int8.onnx_path), input_size=setup.model.input_size)
    batch_size = setup.options.batch_size
    probe = None
    if setup.probe_dataset is not None:
        probe = CocoProbe(setup.probe_dataset, imgsz=setup.model.input_size, batch_size=batch_size)
    meter = GraphMeter(qdq, cache, proxy_images=setup.proxy_images, reference_onnx=Path(setup.model.path),
                       probe=probe, batch_size=batch_size)
    return qdq, meter


def run_sensitivity(
    model: str | Path,
    calib_folder: Path,
    probe_folder: Path | None,
    out_dir: Path,
    *,
    cache: ArtifactCache,
    options: AnalysisOptions = AnalysisOptions(),
    progress: bool = True,
) -> SensitivityReport:
    """Sensitivity of ``model``'s INT8 build (ModelOpt, ``options.calibration_method`` on ``calib_folder``).

    Writes sensitivity.md, sensitivity.csv and sensitivity.png into ``out_dir``. ``probe_folder``
    (a COCO folder: images/ + instances.json) must not overlap the data the model is finally
    evaluated on; calibration images in it are left out of the probe. Without it only the
    proxies are measured.
    """
    setup = prepare_analysis(model, calib_folder, probe_folder, cache, options)
    qdq, meter = open_meter(setup, cache)
    with meter:
        report = layer_sensitivity(meter, model=setup.model.name, top_k=options.top_k if probe_folder else 0,
                                   groups=options.groups, fp32_onnx=Path(setup.model.path), progress=progress)
    return write_sensitivity(report, Path(out_dir))
