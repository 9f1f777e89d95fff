"""The bench's state in one process: options, tables, run, device, and the one pipeline.

Created in ``pytest_configure`` (`quantbench.plugin.entry`) when the bench session is asked for, in
the controlling process and in every pytest-xdist worker. It owns the one
`quantbench.pipeline.Pipeline` of the process (the fixtures' only road to the library), the run
ledger the pipeline reports into (`LedgerObserver`), and the device this process uses. Pass/fail is
never decided here (`quantbench.plugin.evidence`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator
from typing import Any, cast

import numpy as np

from quantbench.backends import BuildOptions, Engine, Runner, resolve_backend
from quantbench.backends.devices import DeviceAssignment, backend_gpus, current_assignment
from quantbench.build.export import ModelInfo
from quantbench.build.onnx_graph import load_graph
from quantbench.build.quantize import SCRATCH_PREFIX, calibration_users
from quantbench.build.variants import Variant
from quantbench.cache import ArtifactCache, ensure_writable_dir, remove_stale_scratch
from quantbench.data.assets import assets_root, default_calib_data
from quantbench.data.calibration import check_calibration_folder
from quantbench.data.dataset import CocoDataset
from quantbench.data.preprocess import Batch, iter_batches
from quantbench.decision.results_store import EvalSettings, ResultsStore, RunLedger, RunRecords
from quantbench.decision.thresholds import ModelThresholds, Thresholds
from quantbench.errors import DataError, QuantbenchError
from quantbench.pipeline import Pipeline, PipelineObserver, PipelineSettings
from quantbench.plugin import progress
from quantbench.plugin.options import BenchOptions
from quantbench.plugin.params import model_id
from quantbench.plugin.progress import ProgressLines
from quantbench.plugin.startup import RunIdentity, Tables
from quantbench.records import EvalResult, VariantBuild

# Accuracy is measured at batch 1: the result does not depend on --qb-batch-sizes, so changing
# the timed batch sizes re-uses every stored evaluation.
EVAL_SETTINGS = EvalSettings(batch_size=1)


class LedgerObserver(PipelineObserver):
    """Writes what the pipeline built, failed on and evaluated into the run ledger, and one progress line
    per artefact this process made (`plugin.progress`)."""

    def __init__(self, ledger: RunLedger, process: str, reported_options: Callable[[str], dict[str, Any]],
                 progress: ProgressLines, calibration_users: Callable[[ModelInfo, Variant], int]):
        self.ledger, self.process, self.reported_options = ledger, process, reported_options
        self.progress, self.calibration_users = progress, calibration_users

    def built(self, build: VariantBuild) -> None:
        self.ledger.add_build(build, process=self.process)
        self.progress.emit(progress.build_line(build))

    def calibrated(self, model: ModelInfo, calibration: Variant, build: VariantBuild) -> None:
        if not build.cached:
            self.progress.emit(progress.calibration_line(build, self.calibration_users(model, calibration)))

    def failed(self, model: str, variant: str, reason: str) -> None:
        self.ledger.add_failure(model, variant, reason)

    def evaluated(self, result: EvalResult, *, computed: bool) -> None:
        self.ledger.add_eval(result, computed=computed, variant_options=self.reported_options(result.variant),
                             process=self.process)
        if computed:
            self.progress.emit(progress.eval_line(result))


class BenchContext:
    """Options, tables, run, device and pipeline of this process; ``write`` reaches the terminal now."""

    def __init__(self, options: BenchOptions, tables: Tables, run: RunIdentity, write: Callable[[str], None]):
        self.options = options
        self.thresholds: Thresholds = tables.thresholds
        self.variants = {v.name: v for v in tables.variants}
        self.warnings = tables.warnings  # start-up warnings, printed in the header
        self.run_id, self.owns_run = run.run_id, run.owns_run
        self._write = write
        cache = ArtifactCache(options.cache_dir, on_wait=self.say)
        self.ledger: RunLedger = ResultsStore(cache).ledger(run.run_id)
        backend_cls, self.fallback_reason = resolve_backend(options.backend)
        backend = backend_cls()
        self.gpus = backend_gpus(backend)
        self.device: DeviceAssignment = current_assignment(self.gpus)
        self.process = self.device.worker or "serial"
        self.progress = ProgressLines(self.say, in_worker=self.device.worker is not None)
        self.pipeline = Pipeline(cache, self._settings(), backend=backend,
                                 observer=LedgerObserver(self.ledger, self.process, self.reported_options,
                                                         self.progress, self.calibration_users))

    def _settings(self) -> PipelineSettings:
        o = self.options
        # Every engine also takes batch 1, the evaluation's batch size.
        sizes = o.batch_sizes + (() if 1 in o.batch_sizes else (1,))
        return PipelineSettings(
            eval_data=o.data, calib_data=o.calib_data, eval_images=o.eval_images, calib_images=o.calib_images,
            backend=o.backend, evaluation=EVAL_SETTINGS, calibration_eps=o.calibration_eps,
            build=BuildOptions(batch_sizes=sizes, device_id=self.device.device_id, threads=self.device.cpu_threads))

    def prepare_folders(self) -> None:
        """Check the output folders and the calibration images before any work; clean what killed runs
        left; claim the run ledger."""
        ensure_writable_dir(self.options.cache_dir, what="cache folder (--qb-cache-dir)")
        ensure_writable_dir(self.options.report_dir, what="report folder (--qb-report-dir)")
        if self.owns_run and self.process == "serial":  # once per run, before its workers start
            self.check_calibration_images()
            self.pipeline.cache.remove_stale_files()
            self.pipeline.store.remove_orphan_ledgers()
            remove_stale_scratch(SCRATCH_PREFIX)
            self.ledger.claim()

    def calibration_users(self, model: ModelInfo, calibration: Variant) -> int:
        """How many of the table's variants for ``model`` (as built) use ``calibration``: the progress line's count."""
        variants = [self.pipeline.effective(v) for v in self.variants.values() if v.applies_to(model.name)]
        return calibration_users(load_graph(model.path), variants, calibration)

    def say(self, message: str) -> None:
        """A progress line the user sees now, even from inside a test or a pytest-xdist worker."""
        self._write(f"quantbench [{self.process}]: {message}")

    # --- configuration ----------------------------------------------------------------------

    @property
    def model_ids(self) -> tuple[str, ...]:
        return tuple(model_id(source) for source in self.options.models)

    def thresholds_for(self, model: str) -> ModelThresholds:
        return self.thresholds.for_model(model)

    def check_calibration_images(self) -> None:
        """Each calibration subset the selected variants will use exists and decodes (one sentence if not),
        found at start-up rather than minutes later inside a ModelOpt build. A calibration folder that
        would be downloaded is checked by the download itself."""
        folder = self.options.calib_data or (default_calib_data() if assets_root() is not None else None)
        if folder is None:
            return
        subsets = {(self.pipeline.effective(v).calib_images, self.pipeline.calib_seed(v))
                   for v in self.variants.values() if v.needs_calibration}
        for num_images, seed in sorted(subsets):
            check_calibration_folder(folder, num_images, seed=seed)

    def variant(self, name: str) -> Variant:
        """The variant as built (--qb-calib-images applied)."""
        return self.pipeline.effective(self.variants[name])

    def reported_options(self, name: str) -> dict[str, Any]:
        """The variant's build options plus ``gated`` (the gate reads it; builds do not depend on it)."""
        variant = self.variant(name)
        return {**variant.options(), "gated": variant.gated}

    # --- artefacts (the pipeline's, memoised there) -------------------------------------------

    def model(self, source: str) -> ModelInfo:
        return self.pipeline.model(source)

    def dataset(self) -> CocoDataset:
        return self.pipeline.dataset()

    def build(self, model: ModelInfo, name: str) -> VariantBuild:
        return self.pipeline.build(model, self.variants[name])

    def engine(self, model: ModelInfo, name: str) -> Engine:
        return self.pipeline.engine(model, self.variants[name])

    def open(self, engine: Engine) -> Runner:
        return self.pipeline.open(engine)

    def evaluation(self, model: ModelInfo, name: str) -> EvalResult:
        return self.pipeline.evaluation(model, self.variants[name])

    def stored_evaluation(self, model: ModelInfo, name: str) -> EvalResult | None:
        """The stored evaluation, or None when there is none or the variant's build failed (its tests say why)."""
        try:
            return self.pipeline.stored_evaluation(model, self.variants[name])
        except QuantbenchError:
            return None

    def latency_batch(self, model: ModelInfo, batch_size: int) -> np.ndarray:
        """A fixed batch of real evaluation images (repeated when the data has fewer)."""
        dataset = self.dataset()
        # The first batch of the data (unreadable images are replaced by the next ones).
        # A generator: closing it stops its decoding threads.
        batches = cast("Generator[Batch, None, None]", iter_batches(dataset.files, batch_size=batch_size, size=model.input_size))
        with contextlib.closing(batches):
            batch = next(batches, None)
        if batch is None:
            raise DataError(f"no image of {dataset.images_dir} can be decoded; pass --qb-data with readable images.")
        return np.resize(batch.images, (batch_size, *batch.images.shape[1:]))

    # --- the run across processes -------------------------------------------------------------

    def not_run(self, records: RunRecords) -> dict[tuple[str, str], str]:
        """(model, variant) -> why, for every variant of this run that left no record at all.

        A variant meant for other models (its ``models`` key) was never asked for this one: not listed.
        """
        seen = {(e.model, e.variant) for e in records.evals} | {(r.model, r.variant) for r in records.latencies}
        return {(m, v): "neither evaluated nor timed in this run (deselected, or the run stopped before it)"
                for m in self.model_ids for v, variant in self.variants.items()
                if (m, v) not in seen and variant.applies_to(m)}

    def adopt_failures(self) -> None:
        """Take the build failures another process of this run recorded, so ModelOpt is not re-run for them."""
        for (model, name), reason in self.ledger.read().failures.items():
            if name in self.variants:
                self.pipeline.remember_failure(model, self.variants[name], reason)
