"""Saved bench runs over time: per model, mAP50-95 and median latency of every variant, run by run.

A saved run is one pytest-benchmark JSON of the bench suite (``--benchmark-json``, or a file of
its ``--benchmark-storage`` folder): its benchmarks carry quantbench's records. `load_runs`
reads files and folders, in time order (pytest-benchmark's ``datetime``). `build_history`
re-selects every run with the given thresholds (so each run names its winner by the same rules)
and lays out one `ModelHistory` per model: one row per run and backend, with what changed since
the previous row: the backend, the device, the TensorRT, driver, ONNX Runtime or ModelOpt
version, the GPU, or the variant table (variants added, removed, or built with other options).

Latency measured on different hardware is not one series. A model whose rows span more than one
(backend, device) is refused unless ``mix=True`` (``quantbench history --mix``); mixed, the lines
run across the change and the change is marked on the plot and in the table.

`write_history` writes ``history.md`` (the tables) and one ``history-<model>.png`` per model
(mAP50-95 above, median latency below, the winner of each run starred, changes as vertical lines),
atomically, with matplotlib's object API on the Agg canvas as `report` does.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantbench.cache import atomic_write_bytes, atomic_write_text
from quantbench.decision.selection import Selection, select
from quantbench.decision.thresholds import Thresholds
from quantbench.errors import ConfigError
from quantbench.outputs.benchmark_json import VariantOptions, records_from_benchmark_json
from quantbench.records import EvalResult, LatencyResult, Provenance
from quantbench.rules import new_figure, png_bytes


class HistoryError(ConfigError):
    """Saved runs that cannot be drawn or compared as one series (another device or backend)."""


@dataclass(frozen=True)
class SavedRun:
    """One saved bench run: its records and when and from which commit it ran."""

    path: Path
    started: str | None  # pytest-benchmark's "datetime" (ISO 8601)
    commit: str | None  # the records' provenance commit, else pytest-benchmark's commit_info id
    evals: tuple[EvalResult, ...]
    latencies: tuple[LatencyResult, ...]
    variant_options: VariantOptions  # (model, variant) -> its options

    @property
    def label(self) -> str:
        when = (self.started or "")[:16].replace("T", " ") or self.path.stem
        return f"{when} {self.commit[:7]}" if self.commit else when

    def provenance(self, model: str, backend: str) -> Provenance | None:
        """The facts recorded with this run's latency of ``model`` on ``backend`` (None before they existed)."""
        return next((r.provenance for r in self.latencies
                     if r.model == model and r.backend == backend and r.provenance is not None), None)

    def device(self, model: str, backend: str) -> str:
        records: Iterable[LatencyResult | EvalResult] = [*self.latencies, *self.evals]
        return next((r.device for r in records if r.model == model and r.backend == backend), "unknown device")


def load_run(path: Path) -> SavedRun:
    """One pytest-benchmark JSON with quantbench records (ConfigError naming the file when it is not one)."""
    path = Path(path)
    evals, latencies, options = records_from_benchmark_json([path])  # validates, one sentence per problem
    data = json.loads(path.read_text(encoding="utf-8"))
    commit_info = data.get("commit_info") if isinstance(data.get("commit_info"), dict) else {}
    # The records' own commit (the quantbench checkout that ran) first: pytest-benchmark's is the git state of
    # the working directory, "unversioned" outside a checkout.
    recorded = next((r.provenance.commit for r in latencies if r.provenance and r.provenance.commit), None)
    commit = recorded or (commit_info.get("id") if commit_info.get("id") != "unversioned" else None)
    started = data.get("datetime") if isinstance(data.get("datetime"), str) else None
    return SavedRun(path, started, commit if isinstance(commit, str) else None, tuple(evals), tuple(latencies), options)


def load_runs(sources: Sequence[Path]) -> list[SavedRun]:
    """The runs in ``sources`` (JSON files, or folders searched for ``*.json`` as pytest-benchmark's storage
    holds them), oldest first (runs without a time first, in the order given); a file named twice is read once."""
    files: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            files += sorted(source.rglob("*.json"))
        elif source.exists():
            files.append(source)
        else:
            raise ConfigError(f"{source} does not exist; pass pytest-benchmark JSON files or a --benchmark-storage folder.")
    if not files:
        raise ConfigError(f"no saved runs in {', '.join(map(str, sources))}; pass --benchmark-json files of the bench suite.")
    unique = list(dict.fromkeys(f.resolve() for f in files))
    return sorted((load_run(f) for f in unique), key=lambda r: r.started or "")  # a stable sort


# --- the history ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VariantPoint:
    """One variant in one run: its mAP50-95, its median latency at the reference batch, its verdict."""

    variant: str
    map50_95: float | None
    latency_ms: float | None
    passed: bool
    gated: bool


@dataclass(frozen=True)
class HistoryRow:
    """One run of one model on one backend, and what changed since the model's previous row."""

    run: int  # 1-based position of the run, oldest first
    source: str
    label: str
    backend: str
    device: str
    provenance: Provenance | None
    winner: str | None
    points: tuple[VariantPoint, ...]
    variant_options: dict[str, dict]  # this row's model's variants -> their options
    changes: tuple[str, ...]

    @property
    def lane(self) -> tuple[str, str]:
        return self.backend, self.device


@dataclass(frozen=True)
class ModelHistory:
    model: str
    rows: tuple[HistoryRow, ...]

    @property
    def lanes(self) -> tuple[tuple[str, str], ...]:
        return tuple(dict.fromkeys(r.lane for r in self.rows))

    @property
    def variants(self) -> tuple[str, ...]:
        """Every variant of any row, by name (a run's outcomes are ranked by latency, which varies)."""
        return tuple(sorted({p.variant for r in self.rows for p in r.points}))


def build_history(runs: Sequence[SavedRun], thresholds: Thresholds, *, reference_batch: int = 1,
                  mix: bool = False) -> list[ModelHistory]:
    """One `ModelHistory` per model, by name; HistoryError for a model on several devices unless ``mix``."""
    rows: dict[str, list[HistoryRow]] = {}
    for index, run in enumerate(runs, start=1):
        for s in select(run.evals, run.latencies, thresholds, reference_batch=reference_batch,
                        variant_options=run.variant_options):
            previous = rows.setdefault(s.model, [])
            row = _row(index, run, s, previous[-1] if previous else None)
            previous.append(row)
    histories = [ModelHistory(model, tuple(r)) for model, r in sorted(rows.items())]
    if not mix:
        for h in histories:
            _refuse_mixed_lanes(h)
    return histories


def _row(index: int, run: SavedRun, s: Selection, previous: HistoryRow | None) -> HistoryRow:
    points = tuple(VariantPoint(o.variant, o.map50_95, o.latency_ms, o.passed, o.gated) for o in s.outcomes)
    options = {p.variant: run.variant_options.get((s.model, p.variant), {}) for p in points}
    row = HistoryRow(run=index, source=str(run.path), label=run.label, backend=s.backend,
                     device=run.device(s.model, s.backend), provenance=run.provenance(s.model, s.backend),
                     winner=s.winner, points=points, variant_options=options, changes=())
    changes = tuple(what_changed(previous, row)) if previous is not None else ()
    return dataclasses.replace(row, changes=changes)


# Provenance facts whose change is marked, with how the table names them.
_MARKED_FACTS = (("tensorrt", "TensorRT"), ("gpu", "GPU"), ("compute_capability", "compute capability"),
                 ("driver", "driver"), ("onnxruntime", "ONNX Runtime"), ("modelopt", "ModelOpt"))


def what_changed(before: HistoryRow, after: HistoryRow) -> list[str]:
    """What differs between two rows of one model: backend, device, versions, GPU, driver, variant table."""
    changes = [f"{name}: {getattr(before, key)} -> {getattr(after, key)}"
               for key, name in (("backend", "backend"), ("device", "device")) if getattr(before, key) != getattr(after, key)]
    old, new = before.provenance, after.provenance
    if old is not None and new is not None:  # runs saved before provenance was recorded mark nothing
        for key, name in _MARKED_FACTS:
            was, now = getattr(old, key), getattr(new, key)
            if was != now:
                changes.append(f"{name}: {was or 'none'} -> {now or 'none'}")
    table = _variant_table_change(before.variant_options, after.variant_options)
    if table:
        changes.append(f"variant table: {table}")
    return changes


def _variant_table_change(before: Mapping[str, dict], after: Mapping[str, dict]) -> str:
    added = [f"+{v}" for v in after if v not in before]
    removed = [f"-{v}" for v in before if v not in after]
    # "gated" is a reporting flag, not part of the build: a variant made exploratory is still the same build.
    rebuilt = [f"~{v} (options)" for v in after if v in before
               and {k: x for k, x in after[v].items() if k != "gated"} != {k: x for k, x in before[v].items() if k != "gated"}]
    return " ".join([*added, *removed, *rebuilt])


def mixed_lanes(h: ModelHistory) -> str | None:
    """Which backends and devices a model's rows span, when more than one, else None."""
    lanes = h.lanes
    if len(lanes) < 2:
        return None
    first = {lane: next(r for r in h.rows if r.lane == lane) for lane in lanes}
    return "; ".join(f"{b} on {d} (run {first[(b, d)].run}, {Path(first[(b, d)].source).name})" for b, d in lanes)


def _refuse_mixed_lanes(h: ModelHistory) -> None:
    where = mixed_lanes(h)
    if where is not None:
        raise HistoryError(
            f"{h.model}: the runs were measured on different backends or devices ({where}); latency on different "
            "hardware is not one series, so no line is drawn across them: pass the runs of one device, or --mix "
            "to draw them as one line with the change marked."
        )


# --- the table --------------------------------------------------------------------------------


def history_markdown(histories: Sequence[ModelHistory], *, png_names: Mapping[str, str] | None = None) -> str:
    """``history.md``: per model, one row per run: winner, mAP50-95 / median latency per variant, changes."""
    lines = ["# quantbench history", "",
             "Each cell: mAP50-95 / median latency per batch at the reference batch size; `fail` marks a variant "
             "that missed its budget in that run. **changed** says what differs from the row above.", ""]
    for h in histories:
        lines += [f"## {h.model}", ""]
        if len(h.lanes) > 1:
            lines += [f"**Mixed devices or backends ({len(h.lanes)}): read latency across a change with care.**", ""]
        if png_names and h.model in png_names:
            lines += [f"![{h.model} history]({png_names[h.model]})", ""]
        variants = h.variants
        head = ["run", "when, commit", "backend on device", "versions", "winner", *variants, "changed"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in h.rows:
            by_variant = {p.variant: p for p in r.points}
            cells = [str(r.run), r.label, f"{r.backend} on {r.device}", _versions(r.provenance), r.winner or "none",
                     *(_cell(by_variant.get(v)) for v in variants), "; ".join(r.changes)]
            lines.append("| " + " | ".join(c.replace("|", "\\|") or " " for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _versions(p: Provenance | None) -> str:
    if p is None:
        return "not recorded"
    parts = [f"TensorRT {p.tensorrt}" if p.tensorrt else None, f"driver {p.driver}" if p.driver else None,
             f"ORT {p.onnxruntime}" if p.onnxruntime else None, f"ModelOpt {p.modelopt}" if p.modelopt else None]
    return ", ".join(x for x in parts if x) or "unknown"


def _cell(p: VariantPoint | None) -> str:
    if p is None:
        return "-"
    acc = "-" if p.map50_95 is None else f"{p.map50_95:.4f}"
    lat = "-" if p.latency_ms is None else f"{p.latency_ms:.2f} ms"
    return f"{acc} / {lat}" + ("" if p.passed else " fail")


# --- the plot ---------------------------------------------------------------------------------


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")


def history_png(h: ModelHistory) -> bytes:
    """mAP50-95 (top) and median latency (bottom) per variant over the runs; winners starred, failures
    crossed, each change a dotted line numbered in the list under the plot."""
    changes = [(i, r) for i, r in enumerate(h.rows) if r.changes]
    notes = [f"[{n}] before #{r.run}: {c}" for n, (_, r) in enumerate(changes, start=1) for c in r.changes]
    fig = new_figure(max(8.5, 1.2 * len(h.rows) + 4.5), 7.0 + 0.14 * len(notes))
    acc_ax, lat_ax, note_ax = fig.subplots(3, 1, height_ratios=[3, 3, 0.15 + 0.12 * len(notes)])
    xs = list(range(len(h.rows)))
    _plot_variants(acc_ax, lat_ax, h)
    winners = [(i, next(p for p in r.points if p.variant == r.winner)) for i, r in enumerate(h.rows) if r.winner]
    winners = [(i, p) for i, p in winners if p.latency_ms is not None]
    if winners:
        lat_ax.scatter([i for i, _ in winners], [p.latency_ms for _, p in winners], marker="*", s=260,
                       color="gold", edgecolors="black", zorder=5, label="winner of the run")
    for n, (i, _) in enumerate(changes, start=1):
        for ax in (acc_ax, lat_ax):
            ax.axvline(i - 0.5, color="tab:gray", ls=":", lw=1.2, zorder=1)
        acc_ax.annotate(f"[{n}]", xy=(i - 0.5, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -10),
                        textcoords="offset points", fontsize=8, color="dimgray")
    where = (f"{len(h.lanes)} devices or backends mixed" if len(h.lanes) > 1
             else f"{h.rows[0].backend} on {h.rows[0].device}")
    acc_ax.set_title(f"{h.model}: {len(h.rows)} runs, {where}", fontsize=10)
    acc_ax.set_ylabel("COCO mAP50-95")
    lat_ax.set_ylabel("median latency per batch (ms)")
    acc_ax.set_xticks(xs, [""] * len(xs))
    lat_ax.set_xticks(xs, [f"#{r.run}\n{r.label}" for r in h.rows], fontsize=7, rotation=20, ha="right")
    for ax in (acc_ax, lat_ax):
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.08, y=0.12)
        ax.set_xlim(-0.5, len(xs) - 0.5)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the plot: it never hides a point
    note_ax.axis("off")
    note_ax.text(0, 1, "\n".join(notes) or "no change of device, versions or variant table between these runs",
                 va="top", ha="left", fontsize=7, transform=note_ax.transAxes)
    return png_bytes(fig, dpi=100)


def _plot_variants(acc_ax: Any, lat_ax: Any, h: ModelHistory) -> None:
    """One line per variant on both panels, a red cross where it missed its budget in that run."""
    xs = list(range(len(h.rows)))
    failures_labelled = False
    for n, variant in enumerate(h.variants):
        pts = [next((p for p in r.points if p.variant == variant), None) for r in h.rows]
        lat = [_value(p, "latency_ms") for p in pts]
        # Hollow markers that change and shrink per variant: equal values (fp32 and fp16 mAP) stay visible.
        style = {"marker": _MARKERS[n % len(_MARKERS)], "markersize": max(4, 10 - n), "markerfacecolor": "none",
                 "markeredgewidth": 1.5, "label": variant}
        (line,) = acc_ax.plot(xs, [_value(p, "map50_95") for p in pts], **style)
        lat_ax.plot(xs, lat, color=line.get_color(), **style)
        failed = [i for i, p in enumerate(pts) if p is not None and not p.passed and p.latency_ms is not None]
        if failed:
            lat_ax.scatter(failed, [lat[i] for i in failed], marker="x", s=70, color="tab:red", zorder=4,
                           label=None if failures_labelled else "missed its budget")
            failures_labelled = True


def _value(p: VariantPoint | None, name: str) -> float:
    value = getattr(p, name) if p is not None else None
    return math.nan if value is None else value  # NaN leaves a gap in the line


# --- files ------------------------------------------------------------------------------------


def png_name(model: str) -> str:
    return "history-" + re.sub(r"[^A-Za-z0-9._-]+", "_", model) + ".png"


def write_history(histories: Sequence[ModelHistory], out_dir: Path) -> dict[str, Path]:
    """Write ``history.md`` and one PNG per model into ``out_dir``; return their paths by name."""
    out_dir = Path(out_dir)
    names = {h.model: png_name(h.model) for h in histories}
    paths = {h.model: atomic_write_bytes(out_dir / names[h.model], history_png(h)) for h in histories}
    paths["history.md"] = atomic_write_text(out_dir / "history.md", history_markdown(histories, png_names=names))
    return paths
