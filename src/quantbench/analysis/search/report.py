"""What a search leaves behind: `SearchResult`, search.md (the trace with every verdict), the curve
(search_curve.png, matplotlib's object API) and the emitted variant table."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantbench.analysis.search.state import SearchOutcome, SearchStep
from quantbench.build.qdq_graph import QdqModel
from quantbench.cache import atomic_write_bytes, atomic_write_text
from quantbench.decision.gate import INCONCLUSIVE
from quantbench.records import BootstrapInterval, VariantBuild
from quantbench.rules import new_figure, png_bytes


@dataclass(frozen=True)
class SearchResult:
    model: str
    variant_name: str
    outcome: SearchOutcome
    variant_toml: str
    probe: str
    cost_model: str
    files: dict[str, str] = field(default_factory=dict)
    build: VariantBuild | None = None  # the verified variant, where built


def _interval_text(ci: BootstrapInterval | None) -> str:
    return "" if ci is None else f"{ci.lower:+.5f} to {ci.upper:+.5f}"


def verdict_sentence(o: SearchOutcome) -> str:
    """The final split's verdict against the budget, with its interval (search.md, the command line)."""
    ci = o.drop_interval
    if ci is None:
        return f"verdict {o.verdict} (point drop only: the probe keeps no match tables)"
    text = (f"verdict {o.verdict}: drop {ci.point:+.5f}, {100 * ci.confidence:g} % interval "
            f"{_interval_text(ci)} on {ci.images} probe images, against the budget {o.budget:.5f}")
    if o.verdict == INCONCLUSIVE:
        text += (f"; about {o.images_needed} probe images would likely decide it" if o.images_needed else
                 "; its point sits on the budget: no number of probe images is likely to decide it")
    return text


_HOW_IT_DECIDES = (
    "- How it decides: each trial is accepted or rejected on its point drop (the best estimate; cheap, "
    "deterministic, and a yes or no for the bisection). Its interval (paired bootstrap over the probe "
    "images vs FP32) and verdict are shown beside it: pass = the whole interval within the budget, "
    "fail = all beyond it, inconclusive = it straddles the budget. The final verdict is the real "
    "build's, by that same rule as the bench gate's."
)


def _summary(result: SearchResult, qdq: QdqModel) -> list[str]:
    o = result.outcome
    verdict = "met" if o.met_budget else "NOT met"
    resolution = ([f"- Probe resolution: +-{o.resolution.half_width:.5f} ({100 * o.resolution.half_width:.2f} mAP "
                   f"points: the {100 * o.resolution.interval.confidence:g} % interval half-width of the full-INT8 "
                   f"drop on {o.resolution.interval.images} images)"] if o.resolution else [])
    real = (f"; real build {o.verified_score:.5f} (drop {o.reference_score - o.verified_score:+.5f})"
            if o.verified_score is not None else "")
    return [
        f"# FP16/INT8 split search for {result.model}",
        "",
        f"- Probe: {result.probe}; reference (FP32) score {o.reference_score:.5f}, budget: drop <= {o.budget:.5f}",
        *resolution,
        *[f"- **Warning**: {w}" for w in o.warnings],
        f"- Result: {len(o.excluded)} of {len(qdq.groups)} layer groups kept out of INT8; "
        f"INT8 share of linear-op FLOPs {100 * o.int8_flop_share:.1f} %; "
        f"simulated probe score {o.score:.5f} (drop {o.reference_score - o.score:+.5f}){real}"
        f"; budget {verdict} by the point drop; {verdict_sentence(o)}.",
        f"- Cost model: {result.cost_model}",
        _HOW_IT_DECIDES,
    ]


def _trace_row(s: SearchStep) -> str:
    return (f"| {s.step} | {s.action} | {'' if s.group is None else f'`{s.group}`'} | {s.fp16_groups} | "
            f"{100 * s.int8_flop_share:.1f} | {s.score:.5f} | {s.drop:+.5f} | {_interval_text(s.drop_interval)} | "
            f"{'yes' if s.within_budget else 'no'} | {s.verdict} | {'yes' if s.accepted else ''} |")


def search_markdown(result: SearchResult, qdq: QdqModel) -> str:
    o = result.outcome
    level = next((f"{100 * s.drop_interval.confidence:g} % " for s in o.steps if s.drop_interval), "")
    lines = [
        *_summary(result, qdq),
        "",
        "## Variant entry (for bench/variants.toml)",
        "",
        "```toml",
        result.variant_toml.rstrip(),
        "```",
        "",
        "## Trace",
        "",
        f"| step | action | group | FP16 groups | INT8 FLOP % | probe score | drop | {level}drop interval | "
        "within budget | verdict | accepted |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |",
        *map(_trace_row, o.steps),
        "",
        "## Groups kept out of INT8",
        "",
    ]
    lines += [f"- `{n}` ({qdq.group(n).op_type}, {qdq.group(n).flops / 1e9:.3f} GFLOPs)" for n in o.excluded]
    return "\n".join(lines) + "\n"


def search_curve(result: SearchResult, path: Path) -> Path:
    """Probe score against the number of groups out of INT8, every trial marked, budget line drawn."""
    o = result.outcome
    fig = new_figure(8, 5, constrained=False)
    ax = fig.subplots()
    forward = sorted((s for s in o.steps if s.action in ("start", "add", "prefix")), key=lambda s: s.fp16_groups)
    ax.plot([s.fp16_groups for s in forward], [s.score for s in forward], "o-", color="tab:blue",
            label="taking groups out of INT8, in search order")
    for action, marker, color in (("trim", "s", "tab:orange"), ("verify", "*", "tab:red")):
        pts = [s for s in o.steps if s.action == action]
        if pts:
            label = "giving a group back to INT8" if action == "trim" else "real ModelOpt build"
            ax.scatter([s.fp16_groups for s in pts], [s.score for s in pts], marker=marker, s=70, color=color,
                       label=label, zorder=3)
    _interval_bars(ax, o.steps)
    ax.axhline(o.reference_score, color="black", lw=1, label="reference (FP32)")
    ax.axhline(o.reference_score - o.budget, color="tab:green", ls="--", lw=1, label="budget")
    for s in forward:
        ax.annotate(f"{100 * s.int8_flop_share:.0f}%", (s.fp16_groups, s.score), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=7)
    ax.set_xlabel("layer groups kept out of INT8 (labels: INT8 share of FLOPs)")
    ax.set_ylabel(result.probe)
    ax.set_title(f"{result.model}: probe score vs layers out of INT8")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return atomic_write_bytes(path, png_bytes(fig))


def _interval_bars(ax: Any, steps: tuple[SearchStep, ...]) -> None:
    """Each trial's drop interval as an error bar on its score (the score's interval is the reference minus the drop's)."""
    pairs = [(s, s.drop_interval) for s in steps if s.drop_interval is not None]
    if not pairs:
        return
    below = [max(0.0, ci.upper - s.drop) for s, ci in pairs]
    above = [max(0.0, s.drop - ci.lower) for s, ci in pairs]
    ax.errorbar([s.fp16_groups for s, _ in pairs], [s.score for s, _ in pairs], yerr=[below, above],
                fmt="none", ecolor="grey", elinewidth=1, capsize=3, zorder=2,
                label=f"{100 * pairs[0][1].confidence:g} % interval of the drop vs FP32 (paired bootstrap)")


def write_search(result: SearchResult, qdq: QdqModel, out_dir: Path) -> SearchResult:
    """Write search.md, search_curve.png and <variant>.toml; the result with their paths."""
    out_dir = Path(out_dir)
    files = {
        "markdown": atomic_write_text(out_dir / "search.md", search_markdown(result, qdq)),
        "curve": search_curve(result, out_dir / "search_curve.png"),
        "variant": atomic_write_text(out_dir / f"{result.variant_name}.toml", result.variant_toml),
    }
    return dataclasses.replace(result, files={k: str(v) for k, v in files.items()})
