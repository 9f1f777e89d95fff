"""Do two bench runs report the same results? (a development tool for refactorings)

    python tools/same_results.py RUN_A RUN_B

Each RUN is a --qb-report-dir of a `pytest bench` run (selection.json, report.md, and the
terminal output saved as bench.log beside them). Compares, with timing masked (latency figures,
speed-ups, images/s, rounds, dates, paths and durations, which no two runs share):
selection.json record by record and report.md's table rows, on the fields and columns both runs
have (those only one has are named), and the timed session's quantbench summary lines and test
outcomes of bench.log. Prints every difference; exits 1 when there is one.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

TIMING_KEYS = {"latency_ms", "images_per_s", "speedup", "latency_noise_ms", "latency_min_ms", "generated",
               "within_noise", "disturbed", "memory_increase", "peak_memory_bytes", "latency_interval_ms",
               "speedup_interval"}
# Numbers that are timings in the text outputs: "177.75 ms", "5.6" img/s, "1.00x", seconds, percentages of time.
_TIMING_TEXT = [
    (re.compile(r"\d+(\.\d+)? ?(ms|s)\b"), "<t>"), (re.compile(r"\b\d+\.\d+x\b"), "<x>"),
    (re.compile(r"\(\d+(\.\d+)? %\)"), "(<%>)"), (re.compile(r"/(work|tmp)/\S+"), "<path>"),
    (re.compile(r"\+\d+ %"), "<%>"),
]


def mask(value):
    if isinstance(value, dict):
        return {k: ("<timing>" if k in TIMING_KEYS else mask(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v) for v in value]
    return value


def masked_text(line: str) -> str:
    for pattern, replacement in _TIMING_TEXT:
        line = pattern.sub(replacement, line)
    return line


def selection_rows(run: Path) -> list:
    document = json.loads((run / "selection.json").read_text())
    selections = document.get("selections", document)
    for s in selections:  # the ranking among passing variants is by latency: compare as sets
        s["outcomes"] = sorted(s["outcomes"], key=lambda o: o["variant"])
        s.pop("winner", None)
    return mask(selections)


def summary_lines(run: Path) -> list[str]:
    """The timed session's summary lines and test outcomes (a parallel build phase prints its own
    section first: its cache-hit counts depend on how pytest-xdist spread the tests, so it is skipped)."""
    log = (run / "bench.log").read_text().splitlines()
    starts = [i for i, line in enumerate(log) if re.match(r"^=+ quantbench =+$", line)]
    log = log[starts[-1]:] if starts else log
    keep = re.compile(r"^(quantbench: (variants built|evaluations run|latency results)|XFAIL|FAILED|ERROR|=+ .*(passed|failed))")
    lines = [masked_text(line) for line in log if keep.match(line)]
    return sorted(re.sub(r" in <t>.*", "", line) for line in lines)


def table_rows(run: Path) -> list[dict[str, str]]:
    """report.md's table rows as {column: cell}, the timing columns masked."""
    rows, columns = [], []
    for line in (run / "report.md").read_text().splitlines():
        if not line.startswith("| ") or line.startswith("| ---"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if "variant" in cells:
            columns = cells
            continue
        if len(cells) == len(columns):
            rows.append({c: ("<timing>" if c in ("latency ms", "img/s", "speed-up") else masked_text(v))
                         for c, v in zip(columns, cells)})
    return sorted(rows, key=lambda r: r.get("variant", ""))


def common_keys(left, right, added: set[str]):
    """Both values restricted to the keys both have (a refactoring may add fields: named in ``added``)."""
    if isinstance(left, dict) and isinstance(right, dict):
        added |= set(left) ^ set(right)
        keys = set(left) & set(right)
        pairs = {k: common_keys(left[k], right[k], added) for k in keys}
        return {k: v[0] for k, v in pairs.items()}, {k: v[1] for k, v in pairs.items()}
    if isinstance(left, list) and isinstance(right, list) and len(left) == len(right):
        pairs = [common_keys(x, y, added) for x, y in zip(left, right)]
        return [p[0] for p in pairs], [p[1] for p in pairs]
    return left, right


def differences(a: Path, b: Path) -> list[str]:
    found = []
    added: set[str] = set()
    left, right = common_keys(selection_rows(a), selection_rows(b), added)
    if left != right:
        found.append("selection.json differs (fields both have)")
    left, right = common_keys(table_rows(a), table_rows(b), added)
    if left != right:
        found.append(f"report.md table rows differ (columns both have):\n  {left}\n  vs\n  {right}")
    if added:
        print(f"fields or columns only one run has (not compared): {', '.join(sorted(added))}")
    left, right = summary_lines(a), summary_lines(b)
    if left != right:
        only_a = [x for x in left if x not in right]
        only_b = [x for x in right if x not in left]
        found.append(f"bench.log summary differs:\n  only in {a}:\n    " + "\n    ".join(only_a)
                     + f"\n  only in {b}:\n    " + "\n    ".join(only_b))
    return found


def main(argv: list[str]) -> int:
    a, b = (Path(p) for p in argv)
    found = differences(a, b)
    for d in found:
        print(d)
    print("same results" if not found else f"{len(found)} difference(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
