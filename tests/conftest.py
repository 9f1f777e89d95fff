"""Shared fixtures for the unit tests: the offline assets and YOLO11 graphs built from YAMLs.

Real-data tests need `QUANTBENCH_ASSETS` (``.ci/run`` and the Makefile point it at
``../shared/assets``); without it they skip with that reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quantbench.cache import ArtifactCache
from quantbench.data.assets import assets_root
from quantbench.errors import DataError


def pytest_configure(config: pytest.Config) -> None:
    # Tests run pytest and other tools in their own folders, which inherit the environment: a
    # relative QUANTBENCH_ASSETS / QUANTBENCH_CACHE (`export QUANTBENCH_ASSETS=../shared/assets`)
    # is made absolute once, here, as .ci/run does.
    for name in ("QUANTBENCH_ASSETS", "QUANTBENCH_CACHE"):
        value = os.environ.get(name, "").strip()
        if value:
            os.environ[name] = str(Path(value).expanduser().resolve())
    # `make test` runs this suite under pytest-xdist, whose workers carry PYTEST_XDIST_* variables;
    # the bench sessions these tests start as subprocesses must not inherit them, or they take
    # themselves for xdist workers (no timing, a device assignment) as no user's shell would.
    for name in [n for n in os.environ if n.startswith("PYTEST_XDIST_")]:
        del os.environ[name]


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    try:
        root = assets_root()  # absolute: the harness tests run pytest in other folders
    except DataError as exc:
        pytest.fail(str(exc))
    if root is None:
        pytest.skip("QUANTBENCH_ASSETS is not set (point it at the offline COCO assets folder)")
    return root


@pytest.fixture(scope="session")
def yolov5n_onnx(assets_dir: Path) -> Path:
    return assets_dir / "models" / "yolov5n-coco.onnx"


@pytest.fixture(scope="session")
def val500(assets_dir: Path) -> Path:
    return assets_dir / "coco" / "val500"


@pytest.fixture(scope="session")
def calib500(assets_dir: Path) -> Path:
    return assets_dir / "coco" / "calib500"


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> ArtifactCache:
    """One artefact cache for the whole test session (exports and calibration tensors reused)."""
    return ArtifactCache(tmp_path_factory.mktemp("qb-cache"))


@pytest.fixture
def cache(tmp_path: Path) -> ArtifactCache:
    """A fresh, empty cache for tests that count builds."""
    return ArtifactCache(tmp_path / "cache")


def _export_yaml(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    pytest.importorskip("ultralytics", reason="ultralytics is needed to build YOLO11 graphs from YAMLs")
    from ultralytics import YOLO

    out = tmp_path_factory.mktemp(name)
    cwd = os.getcwd()
    os.chdir(out)  # Ultralytics writes the export beside the model it loaded
    try:
        path = YOLO(f"{name}.yaml").export(format="onnx", imgsz=640, dynamic=True, simplify=False, verbose=False)
    finally:
        os.chdir(cwd)
    return Path(out) / Path(path).name


@pytest.fixture(scope="session")
def yolo11n_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """YOLO11n from Ultralytics' YAML: random weights (graph, latency, plumbing only; no mAP)."""
    return _export_yaml(tmp_path_factory, "yolo11n")


@pytest.fixture(scope="session")
def yolo11s_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """YOLO11s from Ultralytics' YAML: random weights (graph, latency, plumbing only; no mAP)."""
    return _export_yaml(tmp_path_factory, "yolo11s")


# Fixtures whose first use exports a model through Ultralytics (seconds each): every test that asks
# for one is slow, so `make test-fast` never waits on an export.
EXPORTING_FIXTURES = frozenset({"yolo11n_onnx", "yolo11s_onnx"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if EXPORTING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
