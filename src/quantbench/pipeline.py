"""The one pipeline: model source -> base ONNX -> variant ONNX -> engine -> evaluation.

`Pipeline(cache, settings)` is what the CLI (`quantbench quantize/eval`), the bench fixtures and the
analysis (`quantbench sensitivity/search`) drive; none of them calls the stage functions itself.
Each stage is memoised for the life of the object (pytest re-creates session fixtures when a
parameter comes back; a search asks for the same model and calibration many times) and cached on
disk by content hash (`ArtifactCache`), so a second process finds what the first built. A failed
build or engine is remembered too, so ModelOpt is not re-run for every test of a broken variant.

What the pipeline produced is reported to a `PipelineObserver` (the bench writes it into its run
ledger; the CLI has none). `plan(pairs)` answers "what would have to be built or evaluated?" from
cache lookups alone, on a private read-only copy of the pipeline: it builds, writes and reports
nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from quantbench.backends import Backend, BuildOptions, Engine, Runner, resolve_backend
from quantbench.build.calibration_eps import CalibrationEps, choose_calibration_eps
from quantbench.build.export import DEFAULT_IMGSZ, ModelInfo, resolve_model
from quantbench.build.quantize import CALIBRATION_EPS, quantize_variant
from quantbench.build.variants import Variant, VariantKind
from quantbench.cache import ArtifactCache, ArtifactMissing, atomic_write_json, hash_key
from quantbench.data.assets import default_calib_data, default_eval_data
from quantbench.data.calibration import CalibrationSet, build_calibration
from quantbench.data.dataset import CocoDataset
from quantbench.decision.results_store import EvalSettings, ResultsStore, StoredEval, eval_key
from quantbench.decision.uncertainty import DROP_INTERVAL_METHOD, paired_bootstrap, seed_spread
from quantbench.errors import QuantbenchError, QuantizeError
from quantbench.evaluation.evaluate import EvalSpec, evaluate_with_matches
from quantbench.evaluation.matches import MatchTable
from quantbench.records import AccuracyComparison, CalibrationSpread, EvalResult, VariantBuild, from_dict, to_dict

MATCHES_KIND = "matches"  # cache kind of an evaluation's MatchTable, keyed like the evaluation
COMPARISON_KIND = "comparison"  # cache kind of a paired-bootstrap drop


@dataclass(frozen=True)
class PipelineSettings:
    """Everything besides the model and the variant that decides what the pipeline produces."""

    eval_data: Path | None = None  # COCO folder; None: the default (val500 offline, else a download)
    calib_data: Path | None = None  # COCO folder or image folder; None: the default (calib500 ...)
    eval_images: int | None = None  # the first N images of the evaluation data; None: all
    calib_images: int | None = None  # caps every variant's calib_images; None: as the variant says
    calib_seed: int = 0  # which calibration images (a seeded choice)
    imgsz: int = DEFAULT_IMGSZ  # square input side of exported models
    model_batch: int | None = None  # a fixed batch axis for the base ONNX; None: dynamic
    backend: str = "auto"  # auto, onnxruntime or tensorrt (`backends.resolve_backend`)
    build: BuildOptions = field(default_factory=BuildOptions)  # what every engine is built with
    evaluation: EvalSettings = field(default_factory=EvalSettings)  # batch size and NMS of every evaluation
    resamples: int = 1000  # bootstrap resamples of a paired mAP drop (`comparison`)
    calibration_eps: str = "auto"  # INT8 calibration's EP: auto (fastest that opens), trt, cuda, cpu
    shared_calibration: bool = True  # derive INT8 variants with exclusions from one shared calibration


class PipelineObserver:
    """What is told of the pipeline's work (the bench writes it into its run ledger); hears nothing by
    itself: a subclass overrides what it wants to hear."""

    def built(self, build: VariantBuild) -> None:
        pass

    def calibrated(self, model: ModelInfo, calibration: Variant, build: VariantBuild) -> None:
        """A shared calibration (``calibration``: a ModelOpt INT8 build without exclusions) was made or
        found for a derived variant; ``build.cached`` says which. Not a variant: `built` does not hear it."""

    def failed(self, model: str, variant: str, reason: str) -> None:
        pass

    def evaluated(self, result: EvalResult, *, computed: bool) -> None:
        pass


@dataclass(frozen=True)
class PlannedWork:
    """What `Pipeline.plan` found: the pairs that need work, and why each of the others needs none."""

    missing: tuple[tuple[str, str], ...]  # (model source, variant name) lacking an artefact or an accuracy
    cached: tuple[tuple[str, str], ...]  # everything already in the caches
    failing: tuple[tuple[str, str], ...]  # a user error before anything is built: its tests report it


class Pipeline:
    """Memoised, cached stages; see the module docstring."""

    def __init__(self, cache: ArtifactCache, settings: PipelineSettings = PipelineSettings(), *,
                 backend: Backend | None = None, observer: PipelineObserver | None = None, progress: bool = False):
        self.cache = cache
        self.settings = settings
        self.store = ResultsStore(cache)
        self.observer: PipelineObserver = observer or PipelineObserver()
        self.progress = progress  # a progress bar while evaluating (the CLI's)
        if backend is None:
            backend_cls, self.fallback_reason = resolve_backend(settings.backend)
            backend = backend_cls()
        else:
            self.fallback_reason = None
        self.backend = backend
        self._models: dict[str, ModelInfo] = {}
        self._dataset: CocoDataset | None = None
        self._calibrations: dict[tuple[int, int, int], CalibrationSet] = {}
        self._builds: dict[tuple[str, Variant, int], VariantBuild | QuantizeError] = {}
        self._shared: dict[tuple[str, Variant, int], VariantBuild | QuantizeError] = {}
        self._calibration_eps: dict[str, CalibrationEps] = {}
        self._engines: dict[tuple[str, Variant], Engine | QuantbenchError] = {}
        self._evals: dict[tuple[str, Variant], EvalResult] = {}
        self._eval_keys: dict[tuple[str, Variant], str] = {}

    # --- stages ---------------------------------------------------------------------------

    def model(self, source: str | Path) -> ModelInfo:
        """The validated base ONNX of ``source`` (.onnx as given; .pt/.yaml exported by Ultralytics)."""
        key = str(source)
        if key not in self._models:
            self._models[key] = resolve_model(source, self.cache, imgsz=self.settings.imgsz, batch=self.settings.model_batch)
        return self._models[key]

    def dataset(self) -> CocoDataset:
        """The evaluation data (``eval_images`` applied)."""
        if self._dataset is None:
            folder = self.settings.eval_data or default_eval_data()
            self._dataset = CocoDataset.load(folder, limit=self.settings.eval_images)
        return self._dataset

    def calibration(self, num_images: int, size: int, *, seed: int | None = None) -> CalibrationSet:
        """``num_images`` preprocessed calibration images of side ``size`` (a seeded choice)."""
        key = (num_images, size, self.settings.calib_seed if seed is None else seed)
        if key not in self._calibrations:
            folder = self.settings.calib_data or default_calib_data()
            self._calibrations[key] = build_calibration(folder, num_images, cache=self.cache, seed=key[2], size=size)
        return self._calibrations[key]

    def effective(self, variant: Variant) -> Variant:
        """The variant as built: the ``calib_images`` cap applied."""
        cap = self.settings.calib_images
        if cap is not None and variant.calib_images > cap:
            return dataclasses.replace(variant, calib_images=cap)
        return variant

    def calib_seed(self, variant: Variant) -> int:
        """Which calibration images build ``variant``: its own seed, else the run's."""
        return self.settings.calib_seed if variant.calib_seed is None else variant.calib_seed

    def build(self, model: ModelInfo, variant: Variant) -> VariantBuild:
        """The variant ONNX (ModelOpt runs only when the cache has none); a QuantizeError is remembered."""
        variant = self.effective(variant)
        seed = self.calib_seed(variant)
        key = (model.name, variant, seed)
        if key not in self._builds:
            calib = self.calibration(variant.calib_images, model.input_size, seed=seed) \
                if variant.needs_calibration else None
            eps = self.calibration_eps(variant.calibration_eps).eps if variant.kind is VariantKind.INT8 \
                else CALIBRATION_EPS

            def shared(calibration: Variant) -> VariantBuild:
                return self._shared_calibration(model, calibration, calib, seed, eps)

            try:
                build = quantize_variant(model, variant, calib, self.cache, calibration_eps=eps,
                                         shared=shared if self.settings.shared_calibration else None)
            except QuantizeError as exc:
                self._builds[key] = exc
                self.observer.failed(model.name, variant.name, str(exc))
            else:
                self._builds[key] = build
                self.observer.built(build)
        return _or_raise(self._builds[key])

    def calibration_eps(self, requested: str | None = None) -> CalibrationEps:
        """The EP INT8 calibration runs on: ``requested`` (a variant's ``calibration_eps``), else the run's
        (`calibration_eps.choose_calibration_eps`); chosen once per process and request, so a refused GPU
        EP warns once, not at every build."""
        wanted = requested or self.settings.calibration_eps
        if wanted not in self._calibration_eps:
            self._calibration_eps[wanted] = choose_calibration_eps(wanted)
        return self._calibration_eps[wanted]

    def _shared_calibration(self, model: ModelInfo, calibration: Variant, calib: CalibrationSet | None,
                            seed: int, eps: tuple[str, ...]) -> VariantBuild:
        """The ModelOpt build a derived variant comes from, once per process (a failure too, so ModelOpt is
        not re-run for every variant that needs it); the observer hears of it, not as a variant."""
        key = (model.name, calibration, seed)
        if key not in self._shared:
            try:
                self._shared[key] = quantize_variant(model, calibration, calib, self.cache, calibration_eps=eps)
            except QuantizeError as exc:
                self._shared[key] = exc
            else:
                self.observer.calibrated(model, calibration, self._shared[key])  # type: ignore[arg-type]
        return _or_raise(self._shared[key])

    def remember_failure(self, model: str, variant: Variant, reason: str) -> None:
        """Take a build failure another process found, so this one does not run ModelOpt for it again."""
        variant = self.effective(variant)
        self._builds.setdefault((model, variant, self.calib_seed(variant)), QuantizeError(reason))

    def engine(self, model: ModelInfo, variant: Variant) -> Engine:
        """The backend's engine of the variant; a backend failure names the variant and is remembered."""
        variant = self.effective(variant)
        key = (model.name, variant)
        if key not in self._engines:
            onnx_path = Path(self.build(model, variant).onnx_path)
            try:
                self._engines[key] = self.backend.build(onnx_path, self.settings.build, self.cache)
            except QuantbenchError as exc:
                failure = type(exc)(f"{self.backend.kind.value} cannot run variant {variant.name!r} of model "
                                    f"{model.name}: {exc}")
                self._engines[key] = failure
                self.observer.failed(model.name, variant.name, str(failure))
        return _or_raise(self._engines[key])

    def open(self, engine: Engine) -> Runner:
        return self.backend.open(engine)

    # --- accuracy -------------------------------------------------------------------------

    def evaluation_key(self, model: ModelInfo, variant: Variant) -> str:
        """The results-store key of the variant's evaluation (builds the variant ONNX when missing).

        Remembered: the dataset's fingerprint stats every image, and a comparison asks for two keys
        several times.
        """
        variant = self.effective(variant)
        if (model.name, variant) not in self._eval_keys:
            build = self.build(model, variant)
            self._eval_keys[model.name, variant] = eval_key(
                onnx_sha256=build.onnx_sha256, dataset_fingerprint=self.dataset().fingerprint(self.cache),
                backend=self.backend.kind.value, device=self.backend.device_description(),
                settings=self.settings.evaluation)
        return self._eval_keys[model.name, variant]

    def stored_evaluation(self, model: ModelInfo, variant: Variant) -> EvalResult | None:
        """The variant's accuracy if any process has evaluated it already, else None; never evaluates."""
        variant = self.effective(variant)
        if (model.name, variant) in self._evals:
            return self._evals[model.name, variant]
        key = self.evaluation_key(model, variant)
        found = self.store.lookup(key, model=model.name, variant=variant.name)
        if found is not None:
            self._remember(variant, StoredEval(found, key, computed=False))
        return found

    def evaluation(self, model: ModelInfo, variant: Variant) -> EvalResult:
        """The variant's accuracy from the results store, evaluated (once, across processes) when absent."""
        variant = self.effective(variant)
        if (model.name, variant) in self._evals:
            return self._evals[model.name, variant]
        key = self.evaluation_key(model, variant)
        matched: list[MatchTable] = []
        try:
            stored = self.store.get_or_evaluate(key, lambda: self._evaluate(model, variant, matched),
                                                model=model.name, variant=variant.name)
        except QuantbenchError as exc:
            if exc is not self._engines.get((model.name, variant)):  # an engine failure is noted already
                self.observer.failed(model.name, variant.name,
                                     f"evaluation of variant {variant.name!r} of model {model.name} failed: {exc}")
            raise
        if matched:
            self._keep_matches(key, matched[0])
        self._remember(variant, stored)
        return stored.result

    def _evaluate(self, model: ModelInfo, variant: Variant, matched: list[MatchTable]) -> EvalResult:
        s = self.settings.evaluation
        with self.open(self.engine(model, variant)) as runner:
            spec = EvalSpec(model.name, variant.name, batch_size=s.batch_size, nms=s.nms, untrained=model.untrained,
                            imgsz=model.input_size)
            result, matches = evaluate_with_matches(runner, self.dataset(), spec, progress=self.progress)
        matched.append(matches)
        return result

    def _keep_matches(self, key: str, table: MatchTable) -> None:
        def write(tmp: Path) -> dict:
            table.save(tmp)
            return {"images": table.num_images}

        self.cache.get_or_build(MATCHES_KIND, key, ".npz", write)

    def matches(self, model: ModelInfo, variant: Variant) -> MatchTable:
        """The per-image matches behind the variant's stored mAP (evaluated again if an older run kept none)."""
        variant = self.effective(variant)
        self.evaluation(model, variant)
        key = self.evaluation_key(model, variant)
        entry = self.cache.lookup(MATCHES_KIND, key, ".npz")
        if entry is None:  # evaluated before match tables were kept: the same evaluation, for its matches
            matched: list[MatchTable] = []
            self._evaluate(model, variant, matched)
            self._keep_matches(key, matched[0])
            return matched[0]
        return MatchTable.load(entry.path)

    def has_matches(self, model: ModelInfo, variant: Variant) -> bool:
        """Whether the variant's match table is stored (`matches` would not evaluate for it)."""
        return self.cache.lookup(MATCHES_KIND, self.evaluation_key(model, variant), ".npz") is not None

    def seed_spread(self, model: ModelInfo, variant: Variant, seeds: int) -> CalibrationSpread:
        """mAP50-95 of ``variant`` built from ``seeds`` seeded calibration subsets (the run's seed and the
        next ones): how much of its drop is the luck of which images calibrated it."""
        first = self.calib_seed(variant)
        chosen = tuple(range(first, first + seeds))
        evaluations = [self.evaluation(model, variant)]
        with self._unobserved():
            evaluations += [self.evaluation(model, dataclasses.replace(variant, calib_seed=seed))
                            for seed in chosen[1:]]
        maps = tuple(e.metrics.map50_95 for e in evaluations)
        return CalibrationSpread(model=model.name, variant=variant.name, backend=evaluations[0].backend,
                                 dataset=evaluations[0].dataset, num_images=evaluations[0].num_images,
                                 calib_images=self.effective(variant).calib_images, seeds=chosen, maps=maps,
                                 spread=seed_spread(maps))

    def comparison(self, model: ModelInfo, variant: Variant, baseline: Variant, *, confidence: float,
                   seed: int = 0) -> AccuracyComparison:
        """The variant's mAP drop from ``baseline`` on the same images, with its paired-bootstrap interval (cached)."""
        resamples = self.settings.resamples
        key = hash_key(COMPARISON_KIND, DROP_INTERVAL_METHOD, self.evaluation_key(model, variant),
                       self.evaluation_key(model, baseline), confidence, resamples, seed)
        entry = self.cache.lookup(COMPARISON_KIND, key, ".json")
        if entry is None:
            evaluation = self.evaluation(model, variant)
            drop = paired_bootstrap(self.matches(model, variant), self.matches(model, baseline),
                                    resamples=resamples, confidence=confidence, seed=seed)
            found = AccuracyComparison(model=model.name, variant=variant.name, baseline=baseline.name,
                                       backend=evaluation.backend, dataset=evaluation.dataset,
                                       num_images=evaluation.num_images, drop=drop, seed=seed)

            def write(tmp: Path) -> None:
                atomic_write_json(tmp, to_dict(found))

            entry = self.cache.get_or_build(COMPARISON_KIND, key, ".json", write)
        stored = from_dict(AccuracyComparison, json.loads(entry.path.read_text()), where=str(entry.path))
        return dataclasses.replace(stored, model=model.name, variant=variant.name, baseline=baseline.name)

    def _remember(self, variant: Variant, stored: StoredEval) -> None:
        self._evals[stored.result.model, variant] = stored.result
        self.observer.evaluated(stored.result, computed=stored.computed)

    @contextlib.contextmanager
    def _unobserved(self) -> Iterator[None]:
        """Work the observer does not hear of: the extra calibration seeds of `seed_spread` are no variants."""
        observer, self.observer = self.observer, PipelineObserver()
        try:
            yield
        finally:
            self.observer = observer

    # --- planning -------------------------------------------------------------------------

    def plan(self, pairs: Iterable[tuple[str, Variant]]) -> PlannedWork:
        """Which (model source, variant) pairs lack a variant ONNX, an engine or a stored accuracy.

        Asked of a fresh pipeline over a read-only view of the cache (it raises `ArtifactMissing`
        where a stage would build), with no observer: nothing is built, written or recorded. A pair
        whose model must first be exported or downloaded counts as missing; one that fails with a
        user error is left to its tests, which report it.
        """
        probe = Pipeline(self.cache.read_only(), self.settings, backend=self.backend)
        probe._dataset = self._dataset
        missing: list[tuple[str, str]] = []
        cached: list[tuple[str, str]] = []
        failing: list[tuple[str, str]] = []
        for source, variant in pairs:
            pair = (source, variant.name)
            try:
                model = probe.model(source)
                probe.engine(model, variant)
                done = probe.stored_evaluation(model, variant) is not None and probe.has_matches(model, variant)
                (cached if done else missing).append(pair)
            except ArtifactMissing:
                missing.append(pair)
            except QuantbenchError:
                failing.append(pair)
        return PlannedWork(tuple(missing), tuple(cached), tuple(failing))


def _or_raise(result):
    if isinstance(result, Exception):
        raise result
    return result
