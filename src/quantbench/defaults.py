"""Where the thresholds file and the variant table come from when none is named: one rule for all.

The bench plugin and every CLI command that reads one of these tables call `resolve_table`:

1. an explicit path (``--qb-thresholds``, ``--thresholds``, ...) wins, and must exist;
2. else the project's own file: under pytest's rootdir for the bench, the current folder for the CLI;
3. else the table shipped inside the package (``quantbench/tables/``), so an installed quantbench
   works in an empty folder.

The shipped tables are symlinks to the repository's ``thresholds.toml`` and ``bench/variants.toml``
(which stay where they are): one file each, so they cannot drift, and setuptools copies the
content of a symlinked file into wheels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from quantbench.errors import ConfigError

SHIPPED_DIR = Path(__file__).parent / "tables"


@dataclass(frozen=True)
class DefaultTable:
    """One table a run needs: its words, where a project keeps it, and the package's own copy."""

    what: str  # e.g. "thresholds file", for messages
    project_paths: tuple[Path, ...]  # relative to the project folder, first found wins
    shipped: str  # file name in quantbench/tables/

    @property
    def shipped_path(self) -> Path:
        return SHIPPED_DIR / self.shipped


THRESHOLDS = DefaultTable("thresholds file", (Path("thresholds.toml"),), "thresholds.toml")
# bench/variants.toml is this repository's place; a project with no bench/ folder keeps it at its root.
VARIANTS = DefaultTable("variant table", (Path("bench/variants.toml"), Path("variants.toml")), "variants.toml")


def resolve_table(table: DefaultTable, given: str | Path | None, *, project: Path, option: str) -> Path:
    """The file to read for ``table``: ``given``, else the project's, else the shipped one (module docstring)."""
    if given is not None and str(given):
        path = Path(given).expanduser()
        if not path.is_file():
            raise ConfigError(f"{table.what} {path} ({option}) does not exist; pass an existing file to {option}.")
        return path
    for relative in table.project_paths:
        candidate = project / relative
        if candidate.is_file():
            return candidate
    if not table.shipped_path.is_file():
        raise ConfigError(f"quantbench's own {table.what} {table.shipped_path} is missing (a broken install); "
                          f"reinstall quantbench or pass a file with {option}.")
    return table.shipped_path


def describe_default(table: DefaultTable) -> str:
    """The rule in a few words, for --help texts."""
    places = " or ".join(str(p) for p in table.project_paths)
    return f"{places} in the project, else quantbench's own"
