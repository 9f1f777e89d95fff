"""What the user reads: the terminal table, report.md, selection.json and pareto.png.

Everything here formats `selection.Selection`s and decides nothing. Files are written atomically
(`cache.atomic_write_*`), so a report folder never holds a half-written file. The plot uses
matplotlib's object API with the Agg canvas: no pyplot global state, no display needed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from quantbench.backends.base import BackendKind
from quantbench.build.variants import VariantKind
from quantbench.cache import atomic_write_bytes, atomic_write_json, atomic_write_text
from quantbench.decision.selection import Selection, VariantOutcome
from quantbench.errors import ConfigError
from quantbench.records import SCHEMA_VERSION, from_dict, to_dict
from quantbench.rules import new_figure, png_bytes

# selection.json's "kind": tells a selection file apart from any other JSON.
SELECTION_KIND = "quantbench.selection"  # a file format's name, not a module path: files written before keep reading

_COLUMNS = ("variant", "mAP50-95", "drop", "drop interval", "vs fp32", "latency ms", "img/s", "speed-up",
            "speed-up interval", "result", "reason")


def simulated_prefix(selection: Selection) -> str:
    """"SIMULATED (why): " for a selection built on simulated records (a test fake), else nothing."""
    return f"SIMULATED ({selection.simulated}), not a measurement: " if selection.simulated else ""


# An INT8 Q/DQ graph on ONNX Runtime's CUDA provider runs unfused QuantizeLinear/DequantizeLinear
# kernels, not TensorRT's INT8 kernels: its latency carries this label and is never called INT8 speed.
UNFUSED_QDQ = "unfused Q/DQ on ONNX Runtime CUDA, not TensorRT INT8"


def unfused_qdq_variants(selection: Selection) -> tuple[str, ...]:
    """The INT8 Q/DQ variants of a selection whose latency is ONNX Runtime CUDA's unfused Q/DQ."""
    if selection.backend != BackendKind.ONNXRUNTIME_CUDA.value:
        return ()
    return tuple(o.variant for o in selection.outcomes if o.options.get("kind") == VariantKind.INT8.value)


def unfused_qdq_lines(selection: Selection) -> list[str]:
    names = unfused_qdq_variants(selection)
    return [f"latency of {', '.join(names)}: {UNFUSED_QDQ} (its INT8 speed needs the tensorrt backend)"] if names else []


def winner_line(selection: Selection) -> str:
    """One line naming the fastest passing variant, or saying that none passes."""
    s = selection
    won = s.winning_outcome
    if won is None:
        return (f"{simulated_prefix(s)}no variant passes for {s.model} on {s.backend} at batch {s.reference_batch}: "
                "see the reasons above")
    note = " (the baseline: no faster variant passes)" if won.variant == s.baseline else ""
    untrained = " [untrained model: mAP means nothing]" if won.untrained else ""
    tied = ""
    if s.within_noise:
        others = ", ".join(f"{o.variant} {o.latency_ms:.2f}" for o in map(s.outcome, s.within_noise))
        tied = (f"; within measurement noise of it: {others} ms (+-{won.latency_noise_ms:.2f} ms standard error), "
                "a re-run may rank them first")
    return (
        f"{simulated_prefix(s)}fastest passing: {s.model} {won.variant} on {s.backend} "
        f"({won.latency_ms:.2f} ms{f', {UNFUSED_QDQ}' if won.variant in unfused_qdq_variants(s) else ''}, "
        f"mAP {won.map50_95:.4f}){note}{untrained}{tied}"
    )


def seed_lines(selection: Selection) -> list[str]:
    """How much of each drop is calibration luck: the mAP range over the seeded calibration subsets."""
    lines = []
    for o in selection.outcomes:
        if o.calib_seed_range is None:
            continue
        if o.drop_abs is not None and o.drop_abs > 0:
            share = f"; the seeds alone move it by {100 * o.calib_seed_range / o.drop_abs:.0f} % of its drop"
        elif o.drop_abs is not None:
            share = f"; its drop ({o.drop_abs * 100:+.2f} points) is within what the seeds alone move"
        else:
            share = ""
        stdev = "" if o.calib_seed_stdev is None else f" (stdev {o.calib_seed_stdev * 100:.2f})"
        lines.append(f"calibration luck: {o.variant} mAP50-95 spans {o.calib_seed_range * 100:.2f} points over "
                     f"{o.calib_seeds} calibration seeds{stdev}{share}")
    return lines


def disturbed_lines(selection: Selection) -> list[str]:
    """A warning when some timings show interference from other load on the machine, else nothing."""
    if not selection.disturbed:
        return []
    worst = ", ".join(f"{o.variant} median {ms:.2f} ms vs min {fastest:.2f} ms (+{100 * (ms / fastest - 1):.0f} %)"
                      for o in map(selection.outcome, selection.disturbed)
                      if (ms := o.latency_ms) is not None and (fastest := o.latency_min_ms))
    return [f"timing disturbed: {worst}: other load on the machine? The ranking may not repeat; "
            "re-run on an idle machine."]


def format_selection_table(selection: Selection) -> str:
    """Plain-text table of one selection, ranked as selected, ending with the winner line."""
    rows = [_COLUMNS, *(_row(selection, o) for o in selection.outcomes)]
    # The last column (reasons) is left unpadded: it may be long and should not widen the others.
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS) - 1)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)) + "  " + cells[-1]

    head = (f"{simulated_prefix(selection)}{selection.model} on {selection.backend} "
            f"(batch {selection.reference_batch}, {_criteria_text(selection)})")
    body = [line(rows[0]), line(["-" * w for w in widths] + ["-" * len(_COLUMNS[-1])])]
    body += [line(r).rstrip() for r in rows[1:]]
    return "\n".join([head, *body, winner_line(selection), *seed_lines(selection), *disturbed_lines(selection),
                      *unfused_qdq_lines(selection)])


def _row(selection: Selection, o: VariantOutcome) -> tuple[str, ...]:
    name = o.variant + (" (baseline)" if o.variant == selection.baseline else "")
    return (
        name,
        _num(o.map50_95, "{:.4f}"),
        _drop(o),
        _interval(o.drop_interval, "{:+.2f}", scale=100) + (" pt" if o.drop_interval else ""),
        _reference(o),
        _num(o.latency_ms, "{:.2f}") + (" (unfused Q/DQ)" if o.variant in unfused_qdq_variants(selection) else ""),
        _num(o.images_per_s, "{:.1f}"),
        _num(o.speedup, "{:.2f}x"),
        _interval(o.speedup_interval, "{:.2f}x"),
        _verdict(selection, o),
        "; ".join(o.reasons),
    )


def _verdict(selection: Selection, o: VariantOutcome) -> str:
    if o.variant == selection.winner:
        return "WINNER"
    if not o.gated:
        return f"{o.verdict} (not gated)"
    return {"pass": "pass", "inconclusive": "inconclusive"}.get(o.verdict, "FAIL")


def _reference(o: VariantOutcome) -> str:
    """The paired drop from the FP32 model, with its interval (reported, not gated)."""
    if o.reference_drop is None:
        return "-"
    return f"{o.reference_drop * 100:+.2f} {_interval(o.reference_drop_interval, '{:+.2f}', scale=100)}"


def _interval(bounds: tuple[float, float] | None, fmt: str, *, scale: float = 1.0) -> str:
    """``[low, high]`` of a confidence interval, or "-" where none was measured (point estimates)."""
    if bounds is None:
        return "-"
    return f"[{fmt.format(bounds[0] * scale)}, {fmt.format(bounds[1] * scale)}]"


def _drop(o: VariantOutcome) -> str:
    if o.drop_abs is None:
        return "-"
    rel = f" / {o.drop_rel * 100:.1f}%" if o.drop_rel is not None else ""
    return f"{o.drop_abs * 100:+.2f} pt{rel}"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _criteria_text(selection: Selection) -> str:
    c = selection.criteria
    if not c:
        return f"baseline {selection.baseline}"
    parts = [
        f"baseline {c['baseline']}",
        f"drop <= {c['max_abs_drop'] * 100:.2f} pt and <= {c['max_rel_drop'] * 100:.1f} %",
    ]
    speedup = c.get("min_speedup", {}).get(selection.backend)
    if speedup is not None:
        parts.append(f"speed-up >= {speedup:.2f}x")
    if c.get("max_memory_increase") is not None and any(o.peak_memory_bytes for o in selection.outcomes):
        parts.append(f"GPU memory <= {c['max_memory_increase'] * 100:+.0f} %")
    if c.get("min_map") is not None:
        parts.append(f"baseline mAP >= {c['min_map']:.4f}")
    if c.get("verdicts") == "interval":
        parts.append(f"verdicts from {c.get('confidence', 0.95):.0%} intervals")
    elif c.get("verdicts") == "point":
        parts.append("verdicts from point estimates")
    return ", ".join(parts)


# --- files ------------------------------------------------------------------------------------


def write_report(selections: Sequence[Selection], out_dir: Path, *, rebuild_command: str) -> dict[str, Path]:
    """Write report.md, selection.json and pareto.png into ``out_dir``; return their paths."""
    if not selections:
        raise ConfigError(
            f"nothing to report into {out_dir}: no results were selected; "
            "pass benchmark JSON files that hold quantbench records."
        )
    out_dir = Path(out_dir)
    paths = {"report": out_dir / "report.md", "selection": out_dir / "selection.json", "pareto": out_dir / "pareto.png"}
    atomic_write_json(paths["selection"], selection_document(selections))
    atomic_write_bytes(paths["pareto"], pareto_png(selections))
    markdown = report_markdown(selections, rebuild_command=rebuild_command, pareto_name=paths["pareto"].name)
    atomic_write_text(paths["report"], markdown)
    return paths


def selection_document(selections: Sequence[Selection]) -> dict:
    """selection.json's content: versioned, read back by `read_selection_json`."""
    return {"kind": SELECTION_KIND, "schema": SCHEMA_VERSION, "selections": [to_dict(s) for s in selections]}


def read_selection_json(path: Path) -> list[Selection]:
    """Selections back from a `report.write_report` selection.json (foreign schema versions rejected)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"selection file {path} cannot be read ({exc}); pass a selection.json quantbench wrote.") from None
    if not isinstance(data, dict) or data.get("kind") != SELECTION_KIND:
        raise ConfigError(
            f"{path} is not a quantbench selection.json (kind is not {SELECTION_KIND!r}); pass the file write_report wrote."
        )
    if data.get("schema") != SCHEMA_VERSION:
        raise ConfigError(
            f"{path} has schema version {data.get('schema')!r}, not {SCHEMA_VERSION}; "
            "re-run quantbench select with this version."
        )
    selections = data.get("selections")
    if not isinstance(selections, list):
        raise ConfigError(f"{path} has no 'selections' list; pass the file write_report wrote.")
    return [from_dict(Selection, s, where=f"{path}: selections[{i}]") for i, s in enumerate(selections)]


def gate_verdict(selections: Sequence[Selection]) -> str:
    """One line first in report.md: PASS when every (model, backend) has a winner and every gated variant
    passes, else FAIL naming what missed (a CI summary shows this line before any table)."""
    missed = [f"{o.model} {o.variant} on {o.backend}" for s in selections for o in s.outcomes
              if o.gated and o.verdict == "fail"]
    undecided = [f"{o.model} {o.variant} on {o.backend}" for s in selections for o in s.outcomes
                 if o.gated and o.verdict == "inconclusive"]
    nobody = [f"{s.model} on {s.backend}" for s in selections if s.winner is None]
    # A run on a test fake must not read as a measurement, not even in the one line a CI page shows.
    simulated = next((f"SIMULATED ({s.simulated}), not a measurement: " for s in selections if s.simulated), "")
    if not missed and not nobody:
        open_ = f"; {len(undecided)} inconclusive (never the winner): {_first_few(undecided)}" if undecided else ""
        return (f"{simulated}**PASS**: no gated variant is beyond its budget ({len(selections)} model/backend "
                f"pair(s)){open_}.")
    parts = []
    if nobody:
        parts.append(f"no passing variant for {_first_few(nobody)}")
    if missed:
        parts.append(f"{len(missed)} gated variant(s) miss their budget: {_first_few(missed)}")
    return f"{simulated}**FAIL**: {'; '.join(parts)}."


def _first_few(names: Sequence[str], shown: int = 10) -> str:
    """The first names and how many more: the verdict line stays short however large the run."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


# GitHub shows at most 65 535 characters of a job summary's Markdown: report.md stays under this.
SUMMARY_LIMIT = 65_000


def report_markdown(selections: Sequence[Selection], *, rebuild_command: str, pareto_name: str = "pareto.png",
                    limit: int = SUMMARY_LIMIT) -> str:
    """report.md, fit to be a CI step summary: the verdict first, then the tables, then how to read them."""
    lines = ["# quantbench selection", "", gate_verdict(selections), ""]
    lines += [f"- {winner_line(s)}" for s in selections]
    lines.append("")
    for s in selections:
        lines += _selection_markdown(s)
    lines += [
        "## How to read it",
        "",
        "A variant passes when its mAP50-95 drop versus the baseline is within BOTH the absolute and the "
        "relative limit, and its speed-up (and GPU memory, where measured) meets the backend's target "
        "where one is set. Only gated variants can win; not-gated (exploratory) ones are listed for "
        "information. Latency is the median host time of one synchronised batch.",
        "",
        "Intervals (with `verdicts = \"interval\"` in thresholds.toml): the drop interval is a paired bootstrap "
        "over the evaluation images (variant and baseline resampled together), the speed-up interval a bootstrap "
        "of the two medians' ratio over the timed rounds. A variant passes when its whole interval is within the "
        "budget, fails when its whole interval is beyond it, and is inconclusive otherwise: never the winner, "
        "not a failed test, and its reason says how many evaluation images would likely decide it. Variants "
        "whose latency intervals overlap the winner's are named as ties.",
        "",
        f"![latency vs mAP50-95]({pareto_name})",
        "",
        "## Rebuild this report", "", "```sh", rebuild_command, "```", "",
    ]
    return fit_markdown("\n".join(lines), limit)


def fit_markdown(markdown: str, limit: int = SUMMARY_LIMIT) -> str:
    """``markdown`` cut at a line boundary to at most ``limit`` characters, code fences closed, with a note
    saying so; unchanged when it fits. Every figure stays in selection.json beside the report."""
    if len(markdown) <= limit:
        return markdown
    note = (f"\n\n_Report truncated to fit a CI summary ({limit} characters; the whole report has {len(markdown)}): "
            "every outcome is in selection.json beside this file._\n")
    kept, size, fenced = [], 0, False
    for line in markdown.split("\n"):
        inside = fenced != line.startswith("```")  # in a code block once this line is kept
        if size + len(line) + 1 + (4 if inside else 0) + len(note) > limit:  # 4: the closing "\n```"
            break
        kept.append(line)
        size += len(line) + 1
        fenced = inside
    return "\n".join(kept) + ("\n```" if fenced else "") + note


def _selection_markdown(s: Selection) -> list[str]:
    lines = [f"## {s.model} on {s.backend}", "", f"Batch {s.reference_batch}; {_criteria_text(s)}.", ""]
    if s.simulated:
        lines += [f"**SIMULATED: {s.simulated}. No figure in this section is a {s.backend} measurement.**", ""]
    borrowed = sorted({o.accuracy_backend for o in s.outcomes if o.accuracy_backend and o.accuracy_backend != s.backend})
    if borrowed:
        lines += [f"Accuracy measured on {', '.join(borrowed)} (no {s.backend} accuracy results).", ""]
    if any(o.untrained for o in s.outcomes):
        lines += ["**Untrained model (random weights): its mAP means nothing, so no variant passes the accuracy gate.**", ""]
    lines += ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    for o in s.outcomes:
        cells = [c.replace("|", "\\|") or " " for c in _row(s, o)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", images_line(s), "", f"**{winner_line(s)}**", "",
              *(f"{line}\n" for line in (*seed_lines(s), *disturbed_lines(s), *unfused_qdq_lines(s)))]
    won = s.winning_outcome
    if won is not None:
        lines += [
            f"Options of `{won.variant}` (as in the variants table):",
            "",
            "```json",
            json.dumps(won.options, indent=2, sort_keys=True),
            "```",
            "",
        ]
    return lines


def images_line(s: Selection) -> str:
    """Images each evaluation used and skipped, with the reasons: a skipped image is not in the mAP."""
    parts = [f"{o.variant} {o.images} images, {sum(o.skipped.values())} skipped"
             + (f" ({', '.join(f'{n} {why}' for why, n in sorted(o.skipped.items()))})" if o.skipped else "")
             for o in s.outcomes if o.images is not None]
    return "Evaluated: " + ("; ".join(parts) if parts else "no accuracy results") + "."


def pareto_png(selections: Sequence[Selection]) -> bytes:
    """Latency vs mAP50-95, one panel per (model, backend): pass, fail, not gated, winner, front."""
    n = len(selections)
    cols = min(n, 2)
    rows = (n + cols - 1) // cols
    fig = new_figure(6.4 * cols, 4.8 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, s in zip(axes, selections):
        _pareto_panel(ax, s)
    for ax in axes[n:]:
        ax.set_visible(False)
    return png_bytes(fig, dpi=100)


def _pareto_panel(ax, s: Selection) -> None:
    plotted = [o for o in s.outcomes if o.latency_ms is not None and o.map50_95 is not None]
    styles = {  # scatter() keywords per verdict
        "pass": {"marker": "o", "color": "tab:green", "label": "pass"},
        "fail": {"marker": "x", "color": "tab:red", "label": "fail"},
        "inconclusive": {"marker": "D", "color": "tab:purple", "label": "inconclusive"},
        "info": {"marker": "s", "facecolors": "none", "edgecolors": "tab:gray", "label": "not gated"},
    }
    for kind, style in styles.items():
        pts = [o for o in plotted if o.variant != s.winner and _kind(o) == kind]
        if pts:
            ax.scatter([o.latency_ms for o in pts], [o.map50_95 for o in pts], s=40, zorder=3, **style)
    _error_bars(ax, plotted)
    won = s.winning_outcome
    if won is not None and won in plotted:
        ax.scatter([won.latency_ms], [won.map50_95], marker="*", s=220, color="gold", edgecolors="black",
                   zorder=4, label=f"winner: {won.variant}")
    front = _pareto_front(plotted)
    if len(front) > 1:
        ax.plot([o.latency_ms for o in front], [o.map50_95 for o in front], color="tab:blue", lw=1,
                ls="--", zorder=2, label="Pareto front")
    for o in plotted:
        ax.annotate(o.variant, (o.latency_ms, o.map50_95), textcoords="offset points", xytext=(5, 4), fontsize=8)
    base = next((o for o in plotted if o.variant == s.baseline), None)
    if base is not None and s.criteria:
        # Both drop limits must hold, so the lowest passing mAP is the higher of the two floors.
        floor = max(base.map50_95 - s.criteria["max_abs_drop"], base.map50_95 * (1 - s.criteria["max_rel_drop"]))
        ax.axhline(floor, color="tab:orange", lw=1, ls=":", label=f"lowest passing mAP {floor:.4f}")
    missing = len(s.outcomes) - len(plotted)
    title = f"{s.model} on {s.backend}, batch {s.reference_batch}" + (" (SIMULATED)" if s.simulated else "")
    if missing:
        title += f"\n({missing} variant{'s' if missing > 1 else ''} without latency or mAP not shown)"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("latency per batch (ms, lower is better)")
    ax.set_ylabel("COCO mAP50-95 (higher is better)")
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.12, y=0.08)  # room for the variant labels at the edges
    if plotted:
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "nothing measured", ha="center", va="center", transform=ax.transAxes)


def _error_bars(ax, plotted: Sequence[VariantOutcome]) -> None:
    """The intervals: latency (order statistics of the median) across, the paired mAP drop up and down
    (the variant's mAP as the baseline's minus the drop interval)."""
    for o in plotted:
        ms = o.latency_ms
        if ms is None or (o.latency_interval_ms is None and o.drop_interval is None):
            continue
        xerr = ([[ms - o.latency_interval_ms[0]], [o.latency_interval_ms[1] - ms]]
                if o.latency_interval_ms else None)
        yerr = ([[o.drop_interval[1] - o.drop_abs], [o.drop_abs - o.drop_interval[0]]]
                if o.drop_interval and o.drop_abs is not None else None)
        ax.errorbar([o.latency_ms], [o.map50_95], xerr=xerr, yerr=yerr, fmt="none", ecolor="tab:gray", elinewidth=1,
                    capsize=3, zorder=1)


def _kind(o: VariantOutcome) -> str:
    if not o.gated:
        return "info"
    return o.verdict


def _pareto_front(outcomes: Sequence[VariantOutcome]) -> list[VariantOutcome]:
    """Points no other point beats on both latency (lower) and mAP (higher), by latency."""
    measured = [(o.latency_ms, o.map50_95, o) for o in outcomes if o.latency_ms is not None and o.map50_95 is not None]
    front, best = [], float("-inf")
    for _, score, o in sorted(measured, key=lambda m: (m[0], -m[1])):
        if score > best:
            front.append(o)
            best = score
    return front
