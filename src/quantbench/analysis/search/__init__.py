"""Accuracy-budgeted FP16/INT8 split: keep as much as possible in INT8 within a probe-score budget.

Starting from the full INT8 graph, `search_split` takes layer groups out of INT8 (into the
variant's high precision) in order of INT8 error removed per cost (`search_order`), and finds
the shortest such prefix whose probe score (mAP50-95 on a split disjoint from the evaluation
data) is within ``budget`` of the reference (FP32) score: by bisection (few probe runs) or one
group at a time (a full accuracy curve). A floor on the INT8 share of FLOPs can cap what leaves
INT8. Then it tries to give each excluded linear group back to INT8, the costliest first, keeping
every return that stays within budget. Each trial is a graph derived from the one calibrated INT8
ONNX (`qdq_graph`), so the search never re-calibrates; the result is confirmed on a real ModelOpt
build with the found ``nodes_to_exclude``, in the precision it is deployed in (``verify``), and
more groups are taken out if that build misses.

Cost of a split: the groups kept out of INT8, each weighted by its FLOPs (`FlopCost`). The cost
model is a protocol so that measured TensorRT per-layer latency can replace FLOPs later.

Modules: `config` (cost model, order, `SearchConfig`), `state` (trials, outcome, the resumable
ledger), `algorithm` (`search_split`), `report` (search.md, the curve), `run` (`run_search`, what
`quantbench search` calls). The emitted variant table is written by `build.variants.variant_toml`,
beside its reader.

**Uncertainty.** With a COCO probe (`meter.MatchingProbe`) every trial's drop also gets the
paired-bootstrap interval of the bench gate (`uncertainty.paired_bootstrap` of the trial's and
the FP32 reference's match tables, the same probe images; ``SearchConfig.confidence`` and
``resamples``), and a verdict by the gate's rule (`gate.drop_verdict`): pass when the whole
interval is within the budget, fail when it is all beyond, inconclusive otherwise, with the probe
images that would likely decide it (`uncertainty.images_needed`).

The trials are still accepted or rejected on their *point* drop: it is the best estimate of each
split, it is cheap and deterministic, and bisection needs a yes or no (an inconclusive trial says
neither "more groups out" nor "fewer"). Requiring whole intervals within the budget would instead
push the search to take groups out until the probe's noise, not the INT8 error, fits the budget.
The verdict that matters, on the real verifying build, is the interval's; the point decides only
whether that build takes one more group out (its best estimate misses the budget). Before the
search, the probe's resolution (the half-width of the full-INT8 trial's interval) is compared with
the budget, and a budget below it is warned about: such a search is steered by sampling noise.

Every trial is appended to a state file (atomically) before the next starts: a killed search,
run again with the same inputs, replays the recorded trials and continues from the last one.
"""


from quantbench.analysis.search.algorithm import SearchHooks, SplitTarget, search_split, within_floor
from quantbench.analysis.search.config import (
    DEFAULT_CONFIDENCE,
    CostModel,
    FlopCost,
    SearchConfig,
    Strategy,
    check_budget,
    search_order,
)
from quantbench.analysis.search.report import SearchResult, search_curve, search_markdown, verdict_sentence, write_search
from quantbench.analysis.search.run import budget_source, excluded_patterns, run_search
from quantbench.analysis.search.state import (
    STATE_FILE,
    ProbeResolution,
    SearchOutcome,
    SearchStateError,
    SearchStep,
)

__all__ = [
    "DEFAULT_CONFIDENCE",
    "STATE_FILE",
    "CostModel",
    "FlopCost",
    "ProbeResolution",
    "SearchConfig",
    "SearchHooks",
    "SearchOutcome",
    "SearchResult",
    "SearchStateError",
    "SearchStep",
    "SplitTarget",
    "Strategy",
    "budget_source",
    "check_budget",
    "excluded_patterns",
    "run_search",
    "search_curve",
    "search_markdown",
    "search_order",
    "search_split",
    "verdict_sentence",
    "within_floor",
    "write_search",
]
