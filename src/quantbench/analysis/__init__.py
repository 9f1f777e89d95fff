"""INT8 analysis of a model's ModelOpt build: per-layer sensitivity and the accuracy-budgeted FP16/INT8
split search (`quantbench sensitivity`, `quantbench search`).

- `qdq_graph`: the Q/DQ graph's layer groups, and graphs with any subset of them back in high precision;
- `meter`: measuring those graphs (output agreement with FP32, probe scores, match tables and drop
  intervals), cached;
- `setup`: `AnalysisOptions` and what an analysis works on, prepared through the one `Pipeline`;
- `sensitivity`: the ranking and its report (Markdown, CSV, PNG);
- `search`: the split search (every decision with its drop interval), its resumable ledger and its report;
- `cli`: the two sub-commands of `quantbench`.
"""
