"""quantbench as another repository gets it: built and installed (not editable) into a fresh virtual
environment, then used by ``pytest --qb-*`` in an empty folder holding only a variant table, a
thresholds file and a two-line test file. Nothing is downloaded: the environment reaches the
running interpreter's packages through a ``.pth`` line, and pip builds without isolation.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TEST_FILE = '''"""quantbench's standard bench: accuracy and latency of every (model, variant)."""
from quantbench.plugin.suite import test_accuracy, test_latency  # noqa: F401
'''
# A loose budget on purpose: this test is about the plugin reaching another repository, not about a verdict.
THRESHOLDS = 'baseline = "fp32"\nmax_abs_drop = 0.05\nmax_rel_drop = 0.2\nverdicts = "point"\n'


def variant_rows(names: set[str]) -> str:
    """The [[variant]] tables of the repository's bench/variants.toml named ``names``, copied as written."""
    blocks = (REPO / "bench" / "variants.toml").read_text().split("[[variant]]")[1:]
    named = [(re.search(r'^name = "([^"]+)"', b, re.M), b) for b in blocks]  # the header's own comment has no name
    kept = [b for found, b in named if found and found.group(1) in names]
    assert len(kept) == len(names), f"bench/variants.toml lacks one of {names}"
    return "".join(f"[[variant]]{b}" for b in kept)


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without what would point the child at the checkout or at pytest-xdist."""
    dropped = ("PYTHONPATH", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID")
    return {**{k: v for k, v in os.environ.items() if k not in dropped}, **extra}


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh environment with quantbench built from this checkout as a wheel and installed."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # After the environment's own site-packages: the wheel installed there wins over any other quantbench.
    Path(site, "shared.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                           str(REPO)], capture_output=True, text=True, timeout=600, env=clean_environment())
    assert done.returncode == 0, done.stdout + done.stderr
    return python


def test_the_wheel_carries_the_plugin_the_fixtures_and_the_default_tables(venv_python: Path):
    probe = ("import json, quantbench.plugin.entry as e, quantbench.fixtures.fixtures as f, quantbench.defaults as d;"
             "from importlib.metadata import entry_points;"
             "print(json.dumps({'entry': e.__file__, 'fixtures': f.__file__,"
             "'typed': (d.SHIPPED_DIR.parent / 'py.typed').is_file(),"
             "'tables': {t.shipped: str(t.shipped_path) for t in (d.THRESHOLDS, d.VARIANTS)},"
             "'pytest11': sorted(ep.value for ep in entry_points(group='pytest11') if ep.name == 'quantbench')}))")
    done = subprocess.run([str(venv_python), "-c", probe], cwd=venv_python.parents[2], capture_output=True, text=True,
                          env=clean_environment(), timeout=120)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    venv = venv_python.parents[1]
    assert Path(found["entry"]).is_relative_to(venv) and Path(found["fixtures"]).is_relative_to(venv), found
    assert found["pytest11"] == ["quantbench.plugin.entry"] and found["typed"]
    # The shipped tables are real files in the wheel, equal to the repository's.
    shipped = {name: Path(path) for name, path in found["tables"].items()}
    assert not shipped["thresholds.toml"].is_symlink()
    assert shipped["thresholds.toml"].read_text() == (REPO / "thresholds.toml").read_text()
    assert shipped["variants.toml"].read_text() == (REPO / "bench" / "variants.toml").read_text()


def test_another_repository_runs_the_bench_with_only_its_tables_and_a_test_file(
        venv_python: Path, assets_dir: Path, tmp_path: Path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "variants.toml").write_text(variant_rows({"fp32", "fp16"}))
    (project / "thresholds.toml").write_text(THRESHOLDS)
    (project / "test_bench.py").write_text(TEST_FILE)
    command = [str(venv_python), "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "--junitxml=junit.xml",
               "--qb-model", str(assets_dir / "models" / "yolov5n-coco.onnx"),
               "--qb-data", str(assets_dir / "coco" / "val500"), "--qb-calib-data", str(assets_dir / "coco" / "calib500"),
               "--qb-eval-images", "4", "--qb-backend", "onnxruntime", "--qb-cache-dir", str(tmp_path / "cache"),
               "--qb-rounds", "3", "--qb-warmup", "1", "--qb-min-time", "0"]
    done = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=900,
                          env=clean_environment(QUANTBENCH_ASSETS=str(assets_dir), TMPDIR=str(tmp_path)))
    output = done.stdout + done.stderr
    assert done.returncode == 0, output

    # The plugin that ran is the installed copy, and it read this project's tables.
    origin = re.search(r"^quantbench \S+ from (.+)$", output, re.M)
    assert origin and Path(origin.group(1)).is_relative_to(venv_python.parents[1]), output
    assert f"thresholds {project / 'thresholds.toml'}" in output
    # Every test reached its verdict through the fixture chain: none errored, failed or was skipped
    # (an inconclusive verdict is an xfail, which junit writes as a skip of type pytest.xfail).
    cases = {case.get("name"): [(child.tag, child.get("type")) for child in case if child.tag in ("error", "failure", "skipped")]
             for case in ET.parse(project / "junit.xml").getroot().iter("testcase")}
    assert set(cases) == {"test_accuracy[yolov5n-coco-fp32]", "test_accuracy[yolov5n-coco-fp16]",
                          "test_latency[yolov5n-coco-fp32-b1]", "test_latency[yolov5n-coco-fp16-b1]"}, cases
    assert all(found in ([], [("skipped", "pytest.xfail")]) for found in cases.values()), cases
    # The selection and its report went to the project's reports/ (the default: no pytest config file here).
    (selection,) = json.loads((project / "reports" / "selection.json").read_text())["selections"]
    maps = {o["variant"]: o["map50_95"] for o in selection["outcomes"]}
    assert set(maps) == {"fp32", "fp16"} and all(m > 0 for m in maps.values()), maps
    assert (project / "reports" / "report.md").is_file()
