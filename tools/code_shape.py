"""The shape of the code base, for a refactoring's before/after note (a development tool).

    python tools/code_shape.py [--long 60] [--json out.json] [paths ...]

Prints, for the Python files under the given paths (default: src/quantbench fixtures bench):
file sizes (lines), functions longer than ``--long`` lines, imports made inside functions, and
the import picture: which quantbench module imports which (module level and in-function apart).
Reads the files with ``ast``; imports nothing of the project.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_PATHS = ("src/quantbench", "fixtures", "bench")
PACKAGE = "quantbench"


@dataclass
class ModuleShape:
    name: str
    lines: int
    long_functions: list[tuple[str, int]] = field(default_factory=list)
    imports: set[str] = field(default_factory=set)  # quantbench modules imported at module level
    inner_imports: set[str] = field(default_factory=set)  # ... imported inside a function
    inner_import_count: int = 0


def module_name(path: Path) -> str:
    """``src/quantbench/backends/ort.py`` -> ``quantbench.backends.ort``; ``fixtures/fixtures.py`` -> ``fixtures.fixtures``."""
    parts = list(path.with_suffix("").parts)
    if "src" in parts:
        parts = parts[parts.index("src") + 1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(node: ast.ImportFrom | ast.Import, current: str, is_package: bool) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    if node.level:
        base = current.split(".")
        base = base if is_package else base[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    yield prefix
    for alias in node.names:  # `from . import cli` imports a module
        yield f"{prefix}.{alias.name}"


def _function_spans(tree: ast.AST) -> Iterator[tuple[str, ast.AST]]:
    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, ast.AST]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{prefix}{child.name}", child
                yield from walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")

    yield from walk(tree, "")


def shape_of(path: Path, known: set[str], long_lines: int) -> ModuleShape:
    text = path.read_text()
    tree = ast.parse(text)
    name = module_name(path)
    shape = ModuleShape(name=name, lines=len(text.splitlines()))
    for qualname, fn in _function_spans(tree):
        length = fn.end_lineno - fn.lineno + 1
        if length > long_lines:
            shape.long_functions.append((qualname, length))
    inner_nodes = {id(n) for _, fn in _function_spans(tree) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        targets = {t for t in _resolve(node, name, path.stem == "__init__") if t in known and t != name}
        if id(node) in inner_nodes:
            shape.inner_import_count += 1
            shape.inner_imports |= targets
        else:
            shape.imports |= targets
    shape.inner_imports -= shape.imports
    return shape


def collect(paths: list[Path], long_lines: int) -> list[ModuleShape]:
    files = sorted(f for p in paths for f in (p.rglob("*.py") if p.is_dir() else [p]))
    known = {module_name(f) for f in files}
    return [shape_of(f, known, long_lines) for f in files]


def print_report(shapes: list[ModuleShape], long_lines: int) -> None:
    total = sum(s.lines for s in shapes)
    print(f"## files ({len(shapes)}, {total} lines)\n")
    print(f"| module | lines | functions > {long_lines} lines | in-function imports |")
    print("| --- | ---: | --- | ---: |")
    for s in sorted(shapes, key=lambda s: -s.lines):
        longs = ", ".join(f"{n} {k}" for n, k in sorted(s.long_functions, key=lambda x: -x[1]))
        print(f"| {s.name} | {s.lines} | {longs} | {s.inner_import_count} |")
    long_count = sum(len(s.long_functions) for s in shapes)
    inner = sum(s.inner_import_count for s in shapes)
    print(f"\nfunctions over {long_lines} lines: {long_count}; in-function imports: {inner}\n")
    print("## imports (module level; in-function in brackets)\n")
    for s in sorted(shapes, key=lambda s: s.name):
        own = ", ".join(sorted(m.removeprefix(f"{PACKAGE}.") for m in s.imports))
        inner_names = ", ".join(sorted(m.removeprefix(f"{PACKAGE}.") for m in s.inner_imports))
        print(f"- {s.name}: {own or '-'}" + (f" [{inner_names}]" if inner_names else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, default=[Path(p) for p in DEFAULT_PATHS])
    parser.add_argument("--long", type=int, default=60, help="report functions longer than this (default 60)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    shapes = collect(args.paths, args.long)
    print_report(shapes, args.long)
    if args.json:
        data = [{**asdict(s), "imports": sorted(s.imports), "inner_imports": sorted(s.inner_imports)} for s in shapes]
        args.json.write_text(json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
