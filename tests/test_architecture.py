"""ARCHITECTURE.md is true to the code: every module is listed, and no import breaks the layering.

The layers follow the data flow (ARCHITECTURE.md, "Import layering"): a module may import its own
layer and the layers below it, never one above. Imports inside functions count too: a lazy import
is still a dependency. Read with ``ast``; nothing of the project is imported here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = SRC / "quantbench"

# Lowest first. The key is the first component below `quantbench` (a module or a stage package).
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("foundations", frozenset({"__init__", "errors", "rules", "records", "cache", "stage_clock"})),
    ("data", frozenset({"data"})),
    ("build", frozenset({"build"})),
    ("backends", frozenset({"backends"})),
    ("evaluation", frozenset({"evaluation"})),
    ("decision", frozenset({"decision"})),
    ("outputs", frozenset({"outputs"})),
    ("orchestration", frozenset({"pipeline"})),
    ("drivers", frozenset({"argtypes", "defaults", "cli", "analysis", "plugin", "fixtures"})),
)


def layer_of(module: str) -> int:
    """``quantbench.data.dataset`` -> the index of the `data` layer."""
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    for index, (_, members) in enumerate(LAYERS):
        if key in members:
            return index
    raise AssertionError(f"{module} belongs to no layer: add its package or module to LAYERS and ARCHITECTURE.md")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def package_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def quantbench_imports(path: Path) -> set[str]:
    """Every `quantbench` module this file imports, at module level or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "quantbench")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "quantbench":
            found.add(node.module)
    return found


def test_every_module_belongs_to_a_layer():
    for path in package_modules():
        layer_of(module_name(path))


@pytest.mark.parametrize("path", package_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_layer_above_its_own(path: Path):
    me = module_name(path)
    mine = layer_of(me)
    above = sorted(m for m in quantbench_imports(path) if m != "quantbench" and layer_of(m) > mine)
    assert not above, (f"{me} ({LAYERS[mine][0]}) imports {', '.join(above)} from a higher layer: move the shared "
                       "piece down, or pass it in from the caller")


def test_architecture_md_lists_every_module():
    text = (REPO / "ARCHITECTURE.md").read_text()
    missing = [str(p.relative_to(PACKAGE)) for p in package_modules()
               if p.name != "__init__.py" and f"`{p.relative_to(PACKAGE)}`" not in text]
    assert not missing, f"ARCHITECTURE.md does not list {', '.join(missing)}: add a row for each"


def test_architecture_md_lists_no_module_that_is_gone():
    text = (REPO / "ARCHITECTURE.md").read_text()
    listed = {m for m in (part.split("`")[0] for part in text.split("| `")[1:]) if m.endswith(".py")}
    gone = sorted(m for m in listed if not (PACKAGE / m).is_file() and not (REPO / m).is_file())
    assert not gone, f"ARCHITECTURE.md lists {', '.join(gone)}, which no longer exist"


def test_the_layering_check_catches_an_upward_import(tmp_path: Path):
    # The check itself: a data module importing the pipeline is refused.
    fake = tmp_path / "quantbench" / "data" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from quantbench.pipeline import Pipeline\n    return Pipeline\n")
    assert quantbench_imports(fake) == {"quantbench.pipeline"}
    assert layer_of("quantbench.pipeline") > layer_of("quantbench.data.bad")
