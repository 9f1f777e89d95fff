"""The bench plugin's entry, found by pytest through the ``pytest11`` entry point ``quantbench``
(pyproject.toml), as pytest-benchmark's plugin is: any repository that installs quantbench gets
the ``--qb-*`` options, the markers and the ``qb_*`` fixtures (`quantbench.fixtures.fixtures`).

It stays dormant unless the bench is asked for (`bench_requested`): ``pytest tests`` in this
repository creates nothing. Once asked for, `pytest_configure` reads the options and tables
(`BenchContext`), keeps the `BenchSession` in ``config.stash`` for the fixtures, and registers the
hooks object (`BenchHooks`) with pytest.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable

import pytest

from quantbench.errors import QuantbenchError
from quantbench.plugin.context import BenchContext
from quantbench.plugin.hooks import PLUGIN_NAME, BenchHooks
from quantbench.plugin.options import add_options, options_given, read_options
from quantbench.plugin.results import check_benchmark_json
from quantbench.plugin.session import SESSION_KEY, BenchSession
from quantbench.plugin.startup import load_tables, run_identity

FIXTURES = "quantbench.fixtures.fixtures"
BENCH_DIR = "bench"  # this repository's (and the default project layout's) bench suite folder
ENABLE_INI = "qb_bench"


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)
    parser.addini(ENABLE_INI, type="bool", default=False,
                  help="run the quantbench bench session in every pytest run of this project (default: only when "
                       "bench/ is among the paths or a --qb-* option is given)")


def bench_requested(config: pytest.Config) -> bool:
    """True when a --qb-* option is given, the ini file sets ``qb_bench = true``, or one of pytest's paths
    is the rootdir's bench/ folder, inside it, or a folder holding it (this repository's `pytest bench`)."""
    if options_given(config) or config.getini(ENABLE_INI):
        return True
    bench = (config.rootpath / BENCH_DIR).resolve()
    for arg in config.args:
        path = (config.invocation_params.dir / arg.split("::")[0]).resolve()
        if path == bench or bench in path.parents or path in bench.parents:
            return True
    return False


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "accuracy: bench accuracy test (build + COCO mAP gate); phase 1 of make bench")
    config.addinivalue_line("markers", "latency: bench latency test (timed); phase 2 of make bench")
    if not config.pluginmanager.has_plugin(FIXTURES):  # the qb_* fixtures; `qb` skips while dormant
        config.pluginmanager.import_plugin(FIXTURES)
    if not bench_requested(config) or config.pluginmanager.has_plugin(PLUGIN_NAME):
        return
    try:
        options = read_options(config)
        context = BenchContext(options, load_tables(options), run_identity(config), writer_past_capture(config))
        if not config.option.collectonly:
            context.prepare_folders()
    except QuantbenchError as exc:  # a user error stops pytest with its one sentence
        raise pytest.UsageError(str(exc)) from None
    check_benchmark_json(config)
    session = BenchSession.of(context)
    config.stash[SESSION_KEY] = session
    config.pluginmanager.register(BenchHooks(session, config), PLUGIN_NAME)


def writer_past_capture(config: pytest.Config) -> Callable[[str], None]:
    """Write a line to the terminal's stderr now, past pytest's capture (pytest-xdist workers keep stderr)."""
    capture = config.pluginmanager.get_plugin("capturemanager")

    def write(line: str) -> None:
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            sys.stderr.write(line + "\n")
            sys.stderr.flush()

    return write
