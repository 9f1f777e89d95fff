"""Options, fixtures and the closing table of the host-pipeline benchmark (``make bench-host``).

``pytest bench_host`` evaluates ``--host-images`` images of ``--host-data`` with ``--host-model``'s
real outputs replayed (``replay.ReplayRunner``), once through the reference pipeline of earlier
releases and once through the default one, at each of ``--host-batch-sizes``, and ends with a
table of images/s and CPU milliseconds per image and stage; ``test_bootstrap.py`` times the paired
bootstrap of the mAP drop (``--bootstrap-images``, ``--bootstrap-resamples``). It is its own folder, so ``pytest
bench`` (the product benchmark) never runs it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from quantbench.cache import ArtifactCache
from quantbench.data.assets import assets_root, cache_root
from quantbench.data.dataset import CocoDataset
from quantbench.errors import QuantbenchError
from quantbench.evaluation.replay import ReplayRunner, input_fingerprints, record_outputs
from quantbench.records import CocoMetrics
from quantbench.stage_clock import Stage

HOST_RESULTS = pytest.StashKey["list[HostRun]"]()


@dataclass(frozen=True)
class HostRun:
    """One benchmarked (pipeline, batch size): median images/s and CPU ms per image per stage."""

    pipeline: str
    batch_size: int
    images: int
    images_per_s: float
    metrics: CocoMetrics
    stage_ms: dict[str, float] = field(default_factory=dict)
    threads: tuple[int, int] = (0, 0)

    @property
    def host_cpu_ms(self) -> float:
        """CPU ms per image of every host stage: what the pipeline costs whatever the machine's load."""
        return sum(ms for stage, ms in self.stage_ms.items() if stage != Stage.INFERENCE.value)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{text} is not a positive integer")
    return value


def _batch_sizes(text: str) -> tuple[int, ...]:
    return tuple(_positive_int(part) for part in text.split(","))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("quantbench-host", "quantbench host-pipeline benchmark")
    group.addoption("--host-model", type=Path, default=None,
                    help="ONNX detector whose outputs are replayed (default: $QUANTBENCH_ASSETS/models/yolo11n-coco.onnx)")
    group.addoption("--host-data", type=Path, default=None,
                    help="COCO folder (default: $QUANTBENCH_ASSETS/coco/val500)")
    group.addoption("--host-images", type=_positive_int, default=100, help="images evaluated per round (default 100)")
    group.addoption("--host-batch-sizes", type=_batch_sizes, default=(1, 8), help="comma-separated (default 1,8)")
    group.addoption("--host-rounds", type=_positive_int, default=3, help="timed rounds per case (default 3)")
    group.addoption("--bootstrap-images", type=_positive_int, default=500,
                    help="images of the paired mAP bootstrap (test_bootstrap.py; default 500)")
    group.addoption("--bootstrap-resamples", type=_positive_int, default=1000,
                    help="resamples per timed paired bootstrap (default 1000)")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[HOST_RESULTS] = []


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "batch_size" in metafunc.fixturenames:
        sizes = metafunc.config.getoption("--host-batch-sizes")
        metafunc.parametrize("batch_size", sizes, ids=[f"b{b}" for b in sizes])


def _asset(config: pytest.Config, option: str, relative: str) -> Path:
    given = config.getoption(option)
    if given is not None:
        return given
    root = assets_root()
    if root is None:
        pytest.skip(f"pass {option} or set QUANTBENCH_ASSETS (the offline assets folder)")
    return root / relative


@pytest.fixture(scope="session")
def host_model(request: pytest.FixtureRequest) -> Path:
    return _asset(request.config, "--host-model", "models/yolo11n-coco.onnx")


def _dataset(config: pytest.Config, limit_option: str) -> CocoDataset:
    data = _asset(config, "--host-data", "coco/val500")
    try:
        return CocoDataset.load(data, limit=config.getoption(limit_option))
    except QuantbenchError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def host_dataset(request: pytest.FixtureRequest) -> CocoDataset:
    return _dataset(request.config, "--host-images")


@pytest.fixture(scope="session")
def replay_runner(host_model: Path, host_dataset: CocoDataset) -> ReplayRunner:
    """The model's outputs on the images, computed once with ONNX Runtime (cached) and replayed."""
    outputs = record_outputs(host_model, host_dataset, ArtifactCache(cache_root()))
    # Read into memory once: the timed rounds must not wait on the disk.
    return ReplayRunner(outputs[:], input_fingerprints(host_dataset))


@pytest.fixture(scope="session")
def bootstrap_dataset(request: pytest.FixtureRequest) -> CocoDataset:
    return _dataset(request.config, "--bootstrap-images")


@pytest.fixture(scope="session")
def bootstrap_outputs(host_model: Path, bootstrap_dataset: CocoDataset) -> np.ndarray:
    """The model's raw outputs on the bootstrap's images (ONNX Runtime, cached; memory-mapped)."""
    return record_outputs(host_model, bootstrap_dataset, ArtifactCache(cache_root()))


@pytest.fixture(scope="session")
def bootstrap_resamples(request: pytest.FixtureRequest) -> int:
    return request.config.getoption("--bootstrap-resamples")


@pytest.fixture(scope="session")
def host_rounds(request: pytest.FixtureRequest) -> int:
    return request.config.getoption("--host-rounds")


@pytest.fixture(scope="session")
def host_results(request: pytest.FixtureRequest) -> list[HostRun]:
    return request.config.stash[HOST_RESULTS]


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    runs = config.stash.get(HOST_RESULTS, [])
    if not runs:
        return
    reference = {r.batch_size: r.images_per_s for r in runs if r.pipeline == "reference"}
    stages = [s.value for s in Stage]
    write = terminalreporter.write_line
    write("")
    write(f"host pipeline, inference replayed: {runs[0].images} images, {os.cpu_count()} cores; "
          "ms per image: CPU by stage (inference: wall), host CPU = all host stages")
    write(f"{'pipeline':<10} {'batch':>5} {'threads d/n':>11} {'img/s':>8} {'vs ref':>7} {'host CPU':>9}  "
          + "  ".join(f"{s:>16}" for s in stages))
    for r in runs:
        gain = r.images_per_s / reference[r.batch_size] if r.batch_size in reference else float("nan")
        cells = "  ".join(f"{r.stage_ms.get(s, 0.0):>16.2f}" for s in stages)
        write(f"{r.pipeline:<10} {r.batch_size:>5} {r.threads[0]:>5}/{r.threads[1]:<5} {r.images_per_s:>8.1f} "
              f"{gain:>6.2f}x {r.host_cpu_ms:>9.2f}  {cells}")
