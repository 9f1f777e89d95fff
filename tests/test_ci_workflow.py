"""docs/ci/nightly-gpu.yml: a workflow whose every command exists as written.

The YAML is parsed; every `make` target is asked of make itself (``make -n``), every make variable
is looked up in the Makefile, every pytest option (the workflow's and those of the make recipe it
runs) is looked up in pytest's real option table (``pytest --help`` in the repository: the bench
suite's ``--qb-*`` options, pytest-benchmark's, pytest's own), every ``quantbench`` command line
is parsed by the real CLI parser, and every file the workflow names exists or is one the bench writes.
"""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML reads the workflow (it comes with ultralytics)")

from quantbench.cli import build_parser  # noqa: E402
from quantbench.plugin.options import DEFAULT_REPORT_DIR  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "docs" / "ci" / "nightly-gpu.yml"
_EXPRESSION = re.compile(r"\$\{\{.*?\}\}")
_MATRIX = re.compile(r"\$\{\{\s*matrix\.(\w+)\s*\}\}")
_SUBSTITUTION = re.compile(r"\$\(([^()]*)\)")
_OPERATORS = {";", "&&", "||", "|", "&", ">", ">>", "<", "(", ")"}


@functools.cache
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def steps() -> list[dict]:
    return [step for job in workflow()["jobs"].values() for step in job["steps"]]


def matrix_entries() -> list[dict]:
    """The job's matrix entries (``strategy.matrix.include``); one empty entry without a matrix."""
    (job,) = workflow()["jobs"].values()
    return job.get("strategy", {}).get("matrix", {}).get("include") or [{}]


def commands() -> list[list[str]]:
    """Every simple command of every ``run:`` script, ``$(...)`` substitutions included, as argv lists,
    once per matrix entry with its ``${{ matrix.* }}`` values put in (other expressions become EXPR)."""
    found = []
    scripts = [_MATRIX.sub(lambda m, e=entry: str(e[m.group(1)]), step.get("run", ""))
               for entry in matrix_entries() for step in steps()]
    for script in scripts:
        script = _EXPRESSION.sub("EXPR", script).replace("\\\n", " ")
        for line in script.splitlines():
            inner = _SUBSTITUTION.findall(line)
            for text in [*inner, _SUBSTITUTION.sub("SUBST", line)]:
                lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
                lexer.whitespace_split = True
                command: list[str] = []
                for token in [*lexer, ";"]:
                    if token in _OPERATORS:
                        if command:
                            found.append(command)
                        command = []
                    else:
                        command.append(token)
    return found


def program(command: list[str]) -> str:
    return Path(command[0]).name


def pytest_refusal(args: list[str], cwd: Path) -> str | None:
    """Why pytest refuses ``args`` in this repository (plugins and the bench suite's conftest loaded), or None.

    pytest parses them for real, values through each option's ``type=``, collecting only this file
    (``--help`` does not list every alias, e.g. ``--junitxml``, and ignores unknown options).
    """
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args,
                           str(Path(__file__).resolve())], cwd=cwd, capture_output=True, text=True, timeout=120)
    return None if done.returncode == 0 else (done.stderr.strip() or done.stdout.strip())


def make_dry_run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-n", "-C", str(REPO), *args], capture_output=True, text=True, timeout=60)


def test_the_workflow_runs_nightly_on_a_self_hosted_gpu_runner():
    triggers = workflow().get("on", workflow().get(True))  # YAML 1.1 reads a bare `on` key as True
    assert "schedule" in triggers and "workflow_dispatch" in triggers
    (job,) = workflow()["jobs"].values()
    assert {"self-hosted", "gpu"} <= set(job["runs-on"])
    for step in steps():
        if "uses" in step:
            assert re.fullmatch(r"actions/(checkout|cache/restore|cache/save|upload-artifact)@v4", step["uses"]), step


def test_a_matrix_entry_per_backend_the_cuda_provider_for_runners_without_tensorrt():
    from quantbench.backends import BACKEND_CHOICES

    entries = {e["backend"]: e for e in matrix_entries()}
    assert set(entries) == {"tensorrt", "onnxruntime-cuda"} and set(entries) <= set(BACKEND_CHOICES)
    assert entries["onnxruntime-cuda"]["runner"] == "no-tensorrt" and "trt" not in entries["onnxruntime-cuda"]["install"]
    assert "onnxruntime-gpu[cuda,cudnn]" in entries["onnxruntime-cuda"]["install"]
    assert entries["tensorrt"]["install"] == "'.[test,trt]'"
    benches = [c for c in commands() if program(c) == "make" and "bench" in c]
    assert {a for c in benches for a in c if a.startswith("BENCH_ARGS=")} == {
        f"BENCH_ARGS=--junitxml=reports/junit.xml --qb-backend {b}" for b in entries}


def test_every_make_target_and_variable_exists():
    makefile = (REPO / "Makefile").read_text()
    calls = [c for c in commands() if program(c) == "make"]
    assert calls, "the workflow runs no make target"
    for call in calls:
        targets = [a for a in call[1:] if not a.startswith("-") and "=" not in a]
        variables = [a.split("=", 1)[0] for a in call[1:] if "=" in a and not a.startswith("-")]
        assert targets, call
        for target in targets:
            done = make_dry_run([target])
            assert done.returncode == 0, f"make {target}: {done.stderr}"
        for variable in variables:
            assert re.search(rf"^{variable}\s*[?:+]?=", makefile, re.M), f"{variable} is not a Makefile variable"


def pytest_arguments() -> list[list[str]]:
    """The pytest arguments of the workflow: its BENCH_ARGS, the make recipes it runs, any pytest call."""
    found = []
    for call in (c for c in commands() if program(c) == "make"):
        found += [shlex.split(a.split("=", 1)[1]) for a in call[1:] if a.startswith("BENCH_ARGS=")]
        recipe = make_dry_run(call[1:]).stdout  # what make would run, the workflow's variables applied
        found += [shlex.split(line.split(" -m pytest ", 1)[1]) for line in recipe.splitlines() if " -m pytest " in line]
    found += [c[c.index("pytest") + 1:] for c in commands() if "pytest" in c]
    # The path pytest runs (bench) is not an option: dropped, so that only this file is collected.
    return [[a for a in args if a != "bench"] for args in found]


@pytest.mark.slow
def test_every_pytest_option_of_the_workflow_and_its_make_recipes_is_accepted(tmp_path: Path):
    arguments = pytest_arguments()
    assert any("--junitxml=reports/junit.xml" in args for args in arguments)  # the gate keeps JUnit XML
    assert any("--qb-build-workers" in args for args in arguments)  # make bench's recipe is read
    for args in arguments:
        refusal = pytest_refusal(args, tmp_path)
        # Any --qb-* option wakes the bench plugin, whose start-up checks that the named backend can run:
        # on this machine TensorRT and a CUDA device cannot, which says nothing against the options.
        assert refusal is None or re.search(r"backend '[\w-]+' cannot run here", refusal), (args, refusal)
    # The check refuses what pytest refuses: an unknown option, a bad value.
    assert "unrecognized arguments: --qb-no-such-option" in pytest_refusal(["--qb-no-such-option"], tmp_path)
    assert "--qb-build-workers: '0' must be at least 1" in pytest_refusal(["--qb-build-workers", "0"], tmp_path)


def test_every_quantbench_command_parses_with_the_real_cli():
    parser = build_parser()
    calls = [c for c in commands() if program(c) == "quantbench"]
    assert {c[1] for c in calls} >= {"provenance", "compare", "history"}
    for call in calls:
        try:
            parser.parse_args(call[1:])
        except SystemExit:
            pytest.fail(f"quantbench does not accept: {shlex.join(call)}")


def test_files_named_exist_or_are_what_the_bench_writes():
    text = WORKFLOW.read_text()
    for name in re.findall(r"hashFiles\(([^)]*)\)", text):
        for path in re.findall(r"'([^']+)'", name):
            if not path.startswith("reports/"):
                assert (REPO / path).is_file(), path
    assert (REPO / "thresholds.toml").is_file()
    # `make bench` writes reports/benchmark.json and the report folder the summary reads.
    recipe = make_dry_run(["bench"]).stdout
    assert "--benchmark-json=reports/benchmark.json" in recipe
    assert DEFAULT_REPORT_DIR == Path("reports")
    assert 'cat reports/report.md >> "$GITHUB_STEP_SUMMARY"' in text
    upload = next(s for s in steps() if s.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["with"]["path"] == "reports/" and "always()" in upload["if"]


def test_caches_are_keyed_by_gpu_and_tensorrt_and_the_gate_steps_run_after_a_failure():
    (job,) = workflow()["jobs"].values()
    machine = next(s for s in steps() if s.get("id") == "machine")
    assert "quantbench provenance --cache-key" in machine["run"] and "provenance --device-key" in machine["run"]
    restores = [s for s in steps() if s.get("uses") == "actions/cache/restore@v4"]
    artefacts = next(s for s in restores if s["with"]["path"] == ".quantbench-cache")
    assert artefacts["with"]["key"].startswith("quantbench-${{ steps.machine.outputs.key }}-")
    assert job["env"]["QUANTBENCH_CACHE"].endswith("/" + artefacts["with"]["path"])  # the bench's cache is the one restored
    history = next(s for s in restores if s["with"]["path"] == ".quantbench-history")
    assert "steps.machine.outputs.device" in history["with"]["key"]  # spans TensorRT upgrades
    names = [s.get("name", "") for s in steps()]
    gate = names.index("make bench (the gate)")
    for step in steps()[gate + 1:]:
        condition = step.get("if", "")
        assert "always()" in condition or "success()" in condition, step.get("name")
    saving = [s for s in steps() if "success()" in s.get("if", "")]
    assert all("refs/heads/" in s["if"] for s in saving)  # only a passing default-branch run becomes the baseline
