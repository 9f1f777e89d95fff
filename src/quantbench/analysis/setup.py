"""What an analysis works on: its options, and the model, calibration, INT8 analysis graph, probe split
and proxy images it prepares through the one `Pipeline` (so `quantbench sensitivity/search` build
exactly what `quantbench quantize` and the bench build, from the same cache).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantbench.analysis.meter import CocoProbe, GraphMeter
from quantbench.build.export import ModelInfo
from quantbench.build.qdq_graph import QdqModel
from quantbench.build.variants import CALIBRATION_METHODS, HIGH_PRECISION_DTYPES, VARIANT_NAME_RE, Variant, VariantKind
from quantbench.cache import ArtifactCache
from quantbench.data.calibration import CalibrationSet, calibration_images
from quantbench.data.dataset import CocoDataset
from quantbench.errors import ConfigError, DataError
from quantbench.pipeline import Pipeline, PipelineSettings
from quantbench.records import VariantBuild
from quantbench.rules import check_counts, is_count


@dataclass(frozen=True)
class AnalysisOptions:
    """How a model's INT8 build is analysed: shared by `prepare_analysis`, `run_sensitivity` and
    `search.run_search` (the search's own knobs are `search.SearchConfig`). The command line takes
    its defaults from here.

    Checked on construction: a bad value raises `ConfigError` naming the field and the fix.
    """

    calibration_method: str = "entropy"  # ModelOpt's INT8 calibrator: entropy or max
    calib_images: int = 128  # calibration images, a seeded choice from the calibration folder
    seed: int = 0  # which calibration images
    imgsz: int = 640  # the model's square input side
    probe_images: int = 200  # probe split: images of the probe folder that are not calibration images
    proxy_images: int = 16  # calibration images the output proxies (SQNR, cosine vs FP32) run on
    top_k: int = 12  # best-ranked groups that also get a probe score (0: proxies only)
    groups: tuple[str, ...] | None = None  # analyse only these layer groups (node names); None: all
    # Outside INT8 the *emitted* variant keeps this; the analysis graph always uses FP32 (see
    # `prepare_analysis`).
    high_precision_dtype: str = "fp16"
    variant_name: str = "int8-auto"  # name of the variant a search emits
    batch_size: int = 8  # ONNX Runtime batch for proxies and probes

    def __post_init__(self) -> None:
        if self.calibration_method not in CALIBRATION_METHODS:
            raise ConfigError(f"calibration_method={self.calibration_method!r} is not one of "
                              f"{', '.join(CALIBRATION_METHODS)}; use entropy or max.")
        if self.high_precision_dtype not in HIGH_PRECISION_DTYPES:
            raise ConfigError(f"high_precision_dtype={self.high_precision_dtype!r} is not one of "
                              f"{', '.join(HIGH_PRECISION_DTYPES)}; use fp16 (what TensorRT deploys).")
        check_counts(self, {"calib_images": 1, "probe_images": 1, "proxy_images": 1, "batch_size": 1, "top_k": 0,
                            "seed": 0})
        if not is_count(self.imgsz, 32) or self.imgsz % 32:
            raise ConfigError(f"imgsz={self.imgsz!r} is not a positive multiple of 32; pass e.g. 640.")
        if not isinstance(self.variant_name, str) or not VARIANT_NAME_RE.match(self.variant_name):
            raise ConfigError(f"variant_name={self.variant_name!r} is not a valid variant name; use letters, "
                              "digits, '.', '_' and '-', e.g. int8-auto.")
        if self.groups is not None:
            object.__setattr__(self, "groups", _group_names(self.groups))

    def template(self) -> Variant:
        """The INT8 variant analysed and, with a split's ``nodes_to_exclude``, the one a search emits."""
        return Variant(name=self.variant_name, kind=VariantKind.INT8, calibration_method=self.calibration_method,
                       calib_images=self.calib_images, high_precision_dtype=self.high_precision_dtype)


def _group_names(groups: Iterable[str]) -> tuple[str, ...]:
    if isinstance(groups, str):
        raise ConfigError(f"groups={groups!r} is one string; pass a list of layer group names.")
    names = tuple(groups)
    if not names or not all(isinstance(g, str) for g in names):
        raise ConfigError(f"groups={names!r} names no layer group; pass node names, or None for all groups.")
    return names


@dataclass(frozen=True)
class AnalysisSetup:
    """Everything a sensitivity analysis or a split search works on, built (or found) in the cache."""

    options: AnalysisOptions
    pipeline: Pipeline  # what built all of this; a search's verifying builds go through it too
    model: ModelInfo  # the FP32 model, also the proxies' reference
    template: Variant  # the INT8 variant analysed (calibration method, images, dtype)
    calib: CalibrationSet
    int8: VariantBuild  # the analysis graph: the template with FP32 outside INT8
    probe_dataset: CocoDataset | None
    proxy_images: np.ndarray


def probe_split(probe_folder: Path, calib: CalibrationSet, calib_images_dir: Path, probe_images: int) -> CocoDataset:
    """The first ``probe_images`` images (by id) of ``probe_folder`` that are not calibration images."""
    dataset = CocoDataset.load(Path(probe_folder))
    calibration = {(calib_images_dir / name).resolve() for name in calib.files}
    keep = [i for i, f in enumerate(dataset.files) if f.resolve() not in calibration][:probe_images]
    if not keep:
        raise DataError(
            f"every image of {probe_folder} is a calibration image; give a probe folder with other images or "
            "calibrate on fewer images."
        )
    return dataclasses.replace(
        dataset, name=f"{dataset.name}-probe{len(keep)}",
        image_ids=tuple(dataset.image_ids[i] for i in keep), files=tuple(dataset.files[i] for i in keep),
    )


DEFAULT_OPTIONS = AnalysisOptions()


@dataclass(frozen=True)
class AnalysisInputs:
    """What an analysis reads: the model source (resolved at ``options.imgsz``), the calibration folder,
    the probe folder (a COCO folder disjoint from the evaluation data; None: proxies only) and the cache."""

    model: str | Path
    calib_folder: Path
    probe_folder: Path | None
    cache: ArtifactCache

    def prepare(self, options: AnalysisOptions = DEFAULT_OPTIONS) -> AnalysisSetup:
        """`prepare_analysis` of these inputs."""
        return prepare_analysis(self.model, self.calib_folder, self.probe_folder, self.cache, options)


def analysis_pipeline(calib_folder: Path, cache: ArtifactCache, options: AnalysisOptions) -> Pipeline:
    """The pipeline an analysis builds through: its calibration folder and seed, its input side.

    Probes and proxies run on ONNX Runtime (CPU) whatever the machine has, so no TensorRT is asked for.
    """
    settings = PipelineSettings(calib_data=Path(calib_folder), calib_seed=options.seed, imgsz=options.imgsz,
                                backend="onnxruntime")
    return Pipeline(cache, settings)


def prepare_analysis(
    model: str | Path,
    calib_folder: Path,
    probe_folder: Path | None,
    cache: ArtifactCache,
    options: AnalysisOptions = DEFAULT_OPTIONS,
) -> AnalysisSetup:
    """Resolve the model, calibrate, build the INT8 analysis graph, pick the probe and proxy images.

    The analysis graph is the template variant with FP32 (not ``options.high_precision_dtype``)
    outside INT8: ONNX Runtime runs it faster on the CPU, and with every group bypassed it is
    exactly the FP32 model, so the proxies measure INT8 error alone. The emitted variant keeps the
    dtype asked for, and a search verifies its split in that dtype.
    """
    pipeline = analysis_pipeline(calib_folder, cache, options)
    info = pipeline.model(model)
    calib = pipeline.calibration(options.calib_images, info.input_size)
    template = options.template()
    analysis = dataclasses.replace(template, name=f"{options.variant_name}-analysis", high_precision_dtype="fp32")
    int8 = pipeline.build(info, analysis)
    probe_dataset = None
    if probe_folder is not None:
        images_dir, _ = calibration_images(Path(calib_folder))
        probe_dataset = probe_split(Path(probe_folder), calib, images_dir, options.probe_images)
    stored = np.load(calib.path, mmap_mode="r")  # the whole tensor is ~600 MB for 128 images
    proxies = np.array(stored[: min(options.proxy_images, len(stored))], dtype=np.float32)
    return AnalysisSetup(options, pipeline, info, template, calib, int8, probe_dataset, proxies)


def open_meter(setup: AnalysisSetup) -> tuple[QdqModel, GraphMeter]:
    """The analysis graph parsed, and a meter with the setup's proxies and COCO probe."""
    qdq = QdqModel.load(Path(setup.int8.onnx_path), input_size=setup.model.input_size)
    batch_size = setup.options.batch_size
    probe = None
    if setup.probe_dataset is not None:
        probe = CocoProbe(setup.probe_dataset, imgsz=setup.model.input_size, batch_size=batch_size)
    meter = GraphMeter(qdq, setup.pipeline.cache, proxy_images=setup.proxy_images, reference_onnx=Path(setup.model.path),
                       probe=probe, batch_size=batch_size)
    return qdq, meter
