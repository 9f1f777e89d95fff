"""The bench's pytest hooks: one object registered with pytest (as pytest-benchmark registers its
``BenchmarkSession``) once the bench session is created; its ``pytest_*`` methods are the hooks.

It keeps only what the hooks themselves produce (the build phase's failure, the session summary);
everything else is the `BenchSession`'s.
"""

from __future__ import annotations

from typing import Any

import pytest

import quantbench
from quantbench.backends.devices import assignment_plan
from quantbench.plugin import build_phase, results
from quantbench.plugin.context import BenchContext
from quantbench.plugin.options import describe
from quantbench.plugin.params import RUN_ID, item_pair, model_id
from quantbench.plugin.progress import PhaseProgress
from quantbench.plugin.session import BenchSession

PLUGIN_NAME = "quantbench-bench"


class BenchHooks:
    def __init__(self, session: BenchSession, config: pytest.Config):
        self.session, self.context, self.config = session, session.context, config
        self._build_failure: str | None = None  # why the parallel build phase fails the run
        self._summary: results.BenchSummary | None = None
        self._phase_progress: PhaseProgress | None = None  # the build phase's controller: its workers' lines

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        names, o = set(metafunc.fixturenames), self.context.options
        # scope="session": pytest groups tests by parameter, so each artefact is set up once in a row.
        if "qb_model_source" in names:
            metafunc.parametrize("qb_model_source", list(o.models), ids=[model_id(s) for s in o.models], scope="session")
        if "qb_variant_name" in names:
            metafunc.parametrize("qb_variant_name", list(self.context.variants), scope="session")
        if "qb_batch_size" in names:
            sizes = list(o.batch_sizes)
            metafunc.parametrize("qb_batch_size", sizes, ids=[f"b{b}" for b in sizes], scope="session")

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """Skip variants meant for other models; schedule accuracy before latency, each baseline first.

        The order is for economy, not correctness: a latency test then finds its accuracy (for
        ``extra_info``) and its baseline's latency measured already, so nothing is timed twice. A
        test run in another order still gets the same verdict (`LatencyRecords.baseline`). The sort is
        stable: pytest's grouping by parameter is kept within each phase.
        """
        variants = self.context.variants
        for item in items:
            source, name = item_pair(item)
            reason = variants[name].skip_reason(model_id(source)) if source and name else None
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))

        def order(item: pytest.Item) -> tuple[int, int]:
            if item.get_closest_marker("latency") is None:
                return (0, 0)
            source, name = item_pair(item)
            is_baseline = source is not None and name == self.context.thresholds_for(model_id(source)).baseline
            return (1, 0 if is_baseline else 1)

        items.sort(key=order)

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        workers = config.getoption("numprocesses", None) if config.pluginmanager.hasplugin("xdist") else None
        return header_lines(self.context, workers if isinstance(workers, int) else 0)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> None:
        if not (session.config.option.collectonly or session.testsfailed) and self._times_here():
            self._build_failure = build_phase.run_if_needed(self.context, session)

    def _times_here(self) -> bool:
        """This process runs tests itself (no pytest-xdist here) and is not the build phase's own session."""
        if hasattr(self.config, "workerinput") or self.config.getoption("numprocesses", None):
            return False
        return self.context.owns_run

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo) -> Any:
        """In a build phase: note every test error (not a test failure) in the ledger for the parent session;
        a worker's progress lines ride on the report to the controller (`plugin.progress`)."""
        outcome = yield
        report = outcome.get_result()
        self.context.progress.attach(report)
        if self.context.owns_run or report.when == "call" or not report.failed:
            return
        source, name = item_pair(item)
        lines = [line for line in report.longreprtext.splitlines() if line.strip()]
        self.context.ledger.add_phase_error(item.nodeid, model_id(str(source or "")), str(name or ""),
                                            lines[-1].strip() if lines else "error")

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids: list[str]) -> None:
        """pytest-xdist (controlling process): how many tests the phase runs, for "n/N tests done"."""
        self._progress().collected(len(ids))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """pytest-xdist (controlling process): print the progress lines a worker's report carries."""
        if not hasattr(self.config, "workerinput") and self.config.getoption("numprocesses", None):
            self._progress().report(report)

    def _progress(self) -> PhaseProgress:
        if self._phase_progress is None:
            terminal: Any = self.config.pluginmanager.get_plugin("terminalreporter")
            self._phase_progress = PhaseProgress(_own_line(terminal) if terminal else self.context.say)
        return self._phase_progress

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node) -> None:
        """pytest-xdist (controlling process): every worker writes into this run's ledger."""
        node.workerinput[RUN_ID] = self.context.run_id

    @pytest.hookimpl(optionalhook=True)
    def pytest_benchmark_update_json(self, config: pytest.Config, benchmarks, output_json: dict) -> None:
        """The benchmark JSON also names every variant that failed or left no record, and why."""
        if not hasattr(config, "workerinput"):
            output_json["quantbench"] = results.failures_document(self.context)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not hasattr(session.config, "workerinput"):
            self._summary = results.finish_session(self.session, self._build_failure, session)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self._summary is not None:
            results.print_summary(self._summary, self._build_failure, terminalreporter)


def _own_line(terminal: Any) -> Any:
    """``write_line`` that also ends a line of pytest-xdist's progress dots first (its ``ensure_newline``
    goes by the current file, which xdist's reporting leaves unset)."""
    def write(line: str) -> None:
        if getattr(getattr(terminal, "_tw", None), "width_of_current_line", 0):
            terminal.write("\n")
        terminal.write_line(line)

    return write


def header_lines(context: BenchContext, workers: int) -> list[str]:
    """Warnings, backend, variants, options and device plan of the session, as pytest's header."""
    lines = [f"quantbench: warning: {w}" for w in context.warnings] if context.owns_run else []
    backend = context.pipeline.backend
    if context.fallback_reason:
        lines.append(f"TensorRT not found ({context.fallback_reason}): using ONNX Runtime")
    # Which installed copy runs: an editable checkout and a wheel can both be on a machine.
    lines.append(f"quantbench {quantbench.__version__} from {quantbench.__path__[0]}")
    lines.append(f"quantbench: backend {backend.kind.value} on {backend.device_description()}; "
                 f"variants {', '.join(context.variants)}")
    lines.append(describe(context.options))
    plan = assignment_plan(workers, context.gpus) if workers else (context.device,)
    return lines + [f"quantbench: {a.describe()}" for a in plan]
