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
from the evaluation data). Every measurement is cached by content (`meter.GraphMeter`), so an
interrupted analysis resumes where it stopped. The ranked table is written as Markdown and CSV, with a bar chart.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from quantbench.analysis.meter import GraphMeter, OutputAgreement, error_power, sqnr_gain
from quantbench.analysis.setup import DEFAULT_OPTIONS, AnalysisInputs, AnalysisOptions, open_meter
from quantbench.build.qdq_graph import QdqModel
from quantbench.cache import atomic_write_bytes, atomic_write_text
from quantbench.errors import ConfigError
from quantbench.rules import new_figure, png_bytes


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


def _measure_groups(meter: GraphMeter, names: Sequence[str], progress: bool
                    ) -> tuple[dict[str, OutputAgreement], dict[str, OutputAgreement]]:
    """Each group's *only* and *bypass* agreement with FP32."""
    all_groups = frozenset(meter.qdq.group_names)
    only: dict[str, OutputAgreement] = {}
    bypass: dict[str, OutputAgreement] = {}
    with tqdm(total=2 * len(names), desc="sensitivity", unit="graph", disable=not progress) as bar:
        for name in names:
            bar.set_postfix_str(name[-40:], refresh=False)
            only[name] = meter.agreement({name})
            bar.update()
            bypass[name] = meter.agreement(all_groups - {name})
            bar.update()
    return only, bypass


def _error_shares(only: dict[str, OutputAgreement], full: OutputAgreement, *, whole_model: bool
                  ) -> tuple[dict[str, dict[str, float]], dict[str, float] | None]:
    """Each group's share of the summed lone errors, for scores and boxes; and, over the whole model,
    how much of the full INT8 graph's error those lone errors sum to (None for a subset of groups)."""
    shares: dict[str, dict[str, float]] = {}
    additivity: dict[str, float] | None = {} if whole_model else None
    for part in ("score", "box"):
        errors = {n: error_power(getattr(agreement, f"{part}_sqnr_db")) for n, agreement in only.items()}
        total = sum(errors.values())
        shares[part] = {n: errors[n] / total if total > 0 else 0.0 for n in only}
        full_error = error_power(getattr(full, f"{part}_sqnr_db"))
        if additivity is not None and full_error > 0:
            additivity[part] = total / full_error
    return shares, additivity


@dataclass(frozen=True)
class _ProbeScores:
    fp32: float | None
    int8: float | None
    bypassed: dict[str, float]  # group -> probe score with it alone in high precision


def _probe_top(meter: GraphMeter, ranked_names: Sequence[str], top_k: int, fp32_onnx: Path | None,
               progress: bool) -> _ProbeScores:
    if meter.probe is None or top_k == 0:
        return _ProbeScores(None, None, {})
    all_groups = frozenset(meter.qdq.group_names)
    int8_score = meter.probe_score(all_groups)
    fp32_score = meter.probe_score_of_file(fp32_onnx) if fp32_onnx is not None else None
    bypassed = {name: meter.probe_score(all_groups - {name})
                for name in tqdm(ranked_names[:top_k], desc="probe mAP", unit="graph", disable=not progress)}
    return _ProbeScores(fp32_score, int8_score, bypassed)


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
    names = sorted(qdq.group_names if groups is None else qdq.check_names(groups),
                   key=qdq.group_names.index)  # graph order, whatever order ``groups`` came in
    if top_k < 0:
        raise ConfigError(f"top_k={top_k} is negative; pass 0 (no probing) or more.")
    full = meter.agreement(frozenset(qdq.group_names))
    only, bypass = _measure_groups(meter, names, progress)
    shares, additivity = _error_shares(only, full, whole_model=groups is None)
    measured = _Measured(full, only, bypass, shares)
    ranked_names = sorted(names, key=lambda n: (-measured.share(n), -error_power(only[n].sqnr_db)))
    scores = _probe_top(meter, ranked_names, top_k, fp32_onnx, progress)
    ranked = tuple(_ranked_group(qdq, rank, name, measured, scores) for rank, name in enumerate(ranked_names, start=1))
    return SensitivityReport(
        model=model, int8_onnx=qdq.source, num_groups=len(qdq.groups),
        proxy_images=0 if meter.proxy_images is None else len(meter.proxy_images),
        full_int8=full, additivity=additivity, probe=None if meter.probe is None else meter.probe.description,
        fp32_probe_score=scores.fp32, int8_probe_score=scores.int8, groups=ranked,
    )


@dataclass(frozen=True)
class _Measured:
    full: OutputAgreement  # the full INT8 graph
    only: dict[str, OutputAgreement]
    bypass: dict[str, OutputAgreement]
    shares: dict[str, dict[str, float]]  # "score" / "box" -> group -> share of the summed lone errors

    def share(self, name: str) -> float:
        """The ranking's error share: the mean of the class-score and the box shares."""
        return (self.shares["score"][name] + self.shares["box"][name]) / 2


def _ranked_group(qdq: QdqModel, rank: int, name: str, measured: _Measured, scores: _ProbeScores
                  ) -> GroupSensitivity:
    group = qdq.group(name)
    score = scores.bypassed.get(name)
    return GroupSensitivity(
        rank=rank, name=name, op_type=group.op_type, flops=group.flops,
        flop_share=group.flops / (qdq.linear_flops_total or 1) if group.is_linear else 0.0,
        error_share=measured.share(name), score_error_share=measured.shares["score"][name],
        box_error_share=measured.shares["box"][name], bypass=measured.bypass[name], only=measured.only[name],
        bypass_gain_db=sqnr_gain(measured.bypass[name].score_sqnr_db, measured.full.score_sqnr_db),
        probe_score=score, probe_gain=None if score is None or scores.int8 is None else score - scores.int8,
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
    shown = report.groups[:top]
    labels = [f"{g.rank}. {g.name[-48:]}" for g in shown][::-1]
    fig = new_figure(14, 0.32 * len(shown) + 1.6, constrained=False)
    axes = fig.subplots(1, 2, sharey=True)
    axes[0].barh(labels, [100 * g.error_share for g in shown][::-1], color="tab:blue")
    axes[0].set_xlabel("share of the INT8 error caused by the group alone (%, scores and boxes)")
    probe_gain = [0.0 if g.probe_gain is None else 100 * g.probe_gain for g in shown][::-1]
    colors = ["tab:gray" if g.probe_gain is None else "tab:green" for g in shown][::-1]
    axes[1].barh(labels, probe_gain, color=colors)
    axes[1].set_xlabel("probe mAP50-95 gained when kept in high precision (points; gray: not probed)")
    fig.suptitle(f"INT8 sensitivity of {report.model} ({report.num_groups} layer groups, top {len(shown)})")
    fig.tight_layout()
    return atomic_write_bytes(path, png_bytes(fig))


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
# Library entry point (what `quantbench sensitivity` calls)


def run_sensitivity(inputs: AnalysisInputs, out_dir: Path, *, options: AnalysisOptions = DEFAULT_OPTIONS,
                    progress: bool = True) -> SensitivityReport:
    """Sensitivity of the INT8 build of ``inputs.model`` (ModelOpt, ``options.calibration_method`` on
    ``inputs.calib_folder``).

    Writes sensitivity.md, sensitivity.csv and sensitivity.png into ``out_dir``. ``inputs.probe_folder``
    (a COCO folder: images/ + instances.json) must not overlap the data the model is finally
    evaluated on; calibration images in it are left out of the probe. Without it only the
    proxies are measured.
    """
    setup = inputs.prepare(options)
    _, meter = open_meter(setup)
    with meter:
        report = layer_sensitivity(meter, model=setup.model.name, top_k=options.top_k if inputs.probe_folder else 0,
                                   groups=options.groups, fp32_onnx=Path(setup.model.path), progress=progress)
    return write_sensitivity(report, Path(out_dir))
