"""Where the thresholds file and the variant table come from (`quantbench.defaults`): one rule for the
bench plugin and every CLI command, and the tables shipped inside the package."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantbench.build.variants import load_variants
from quantbench.cli import main
from quantbench.decision.thresholds import Thresholds
from quantbench.defaults import THRESHOLDS, VARIANTS, resolve_table
from quantbench.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
# A key thresholds.toml does not have: a command that reads this file stops and names it.
TYPO = "max_abs_drp = 0.01\n"


def test_an_explicit_file_wins_and_a_missing_one_names_the_option(tmp_path: Path):
    (tmp_path / "thresholds.toml").write_text("")
    given = tmp_path / "mine.toml"
    given.write_text("")
    assert resolve_table(THRESHOLDS, given, project=tmp_path, option="--thresholds") == given
    with pytest.raises(ConfigError, match=r"^thresholds file .*nope\.toml \(--qb-thresholds\) does not exist; "
                                          r"pass an existing file to --qb-thresholds\.$"):
        resolve_table(THRESHOLDS, tmp_path / "nope.toml", project=tmp_path, option="--qb-thresholds")


def test_the_project_file_comes_before_the_shipped_one(tmp_path: Path):
    assert resolve_table(VARIANTS, None, project=tmp_path, option="--variants-file") == VARIANTS.shipped_path
    (tmp_path / "variants.toml").write_text("")
    assert resolve_table(VARIANTS, None, project=tmp_path, option="--variants-file") == tmp_path / "variants.toml"
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "variants.toml").write_text("")  # this repository's layout comes first
    assert resolve_table(VARIANTS, None, project=tmp_path, option="--variants-file") == tmp_path / "bench" / "variants.toml"


def test_the_shipped_tables_are_the_repositorys_and_load():
    # Symlinks in a checkout; a wheel holds their content (tests/test_install.py checks that copy).
    assert THRESHOLDS.shipped_path.read_bytes() == (REPO / "thresholds.toml").read_bytes()
    assert VARIANTS.shipped_path.read_bytes() == (REPO / "bench" / "variants.toml").read_bytes()
    assert Thresholds.load(THRESHOLDS.shipped_path).for_model("yolo11n-coco").baseline
    assert {v.name for v in load_variants(VARIANTS.shipped_path)} >= {"fp32", "fp16"}


# `select` reads its runs first; these two read the thresholds first, so a bad file there stops them.
@pytest.mark.parametrize("command", [["compare", "base.json", "new.json"], ["history", "base.json"]],
                         ids=["compare", "history"])
def test_record_commands_read_the_current_folders_thresholds(command, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "thresholds.toml").write_text(TYPO)
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "max_abs_drp" in err and "thresholds.toml" in err, err


@pytest.mark.parametrize("command", [["compare", "base.json", "new.json"], ["history", "base.json"]],
                         ids=["compare", "history"])
def test_record_commands_fall_back_on_the_shipped_thresholds(command, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no thresholds.toml here: the package's own is read, then the runs
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "thresholds" not in err and "base.json" in err, err
