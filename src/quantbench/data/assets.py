"""Where defaults come from: an offline assets folder, or downloads into the user's cache.

With ``QUANTBENCH_ASSETS`` set (CI, offline machines) nothing is downloaded: the default model is
``<assets>/models/yolo11n-coco.onnx`` (the COCO-trained YOLO11n; ``yolov5n-coco.onnx`` beside it is
a second real model, ``--model``/``--qb-model`` picks it) and the data are ``<assets>/coco/val500`` (evaluation) and
``<assets>/coco/calib500`` (calibration). Without it the default model is ``yolo11n.pt``, which
Ultralytics downloads itself when it exports, and the data are disjoint seeded subsets of COCO
val2017 fetched from the official archives into the cache (see `quantbench.data.download`).
"""

from __future__ import annotations

import os
from pathlib import Path

from quantbench.data.download import COCO_VAL2017, CocoSource, SubsetRole, fetch_coco_subset
from quantbench.errors import DataError, ModelError

ASSETS_ENV = "QUANTBENCH_ASSETS"
CACHE_ENV = "QUANTBENCH_CACHE"

PRETRAINED_MODEL = "yolo11n.pt"
ASSETS_MODEL = Path("models/yolo11n-coco.onnx")
ASSETS_EVAL_DATA = Path("coco/val500")
ASSETS_CALIB_DATA = Path("coco/calib500")
SUBSET_IMAGES = 500  # images per downloaded subset (evaluation and calibration each)


def assets_root() -> Path | None:
    """The offline assets folder named by ``$QUANTBENCH_ASSETS`` (made absolute), or None when unset or empty.

    Absolute because the value is read once and used from other working directories: ModelOpt
    runs in a scratch folder, the bench's build phase and the harness tests in their own.
    """
    value = os.environ.get(ASSETS_ENV, "").strip()
    if not value:
        return None
    root = Path(value).expanduser()
    if not root.is_dir():
        raise DataError(
            f"{ASSETS_ENV}={value} is not a folder; point it at the offline assets folder (with models/ and coco/) "
            "or unset it to download COCO instead."
        )
    return root.resolve()


def absolute_environment() -> dict[str, str]:
    """``QUANTBENCH_ASSETS`` and ``QUANTBENCH_CACHE`` as absolute paths, for a child process.

    A relative value means "relative to where I started": a child started in another folder (the
    bench's build phase runs in the repository root) must get it resolved here, not there.
    """
    resolved = {}
    for name in (ASSETS_ENV, CACHE_ENV):
        value = os.environ.get(name, "").strip()
        if value:
            resolved[name] = str(Path(value).expanduser().resolve())
    return resolved


def cache_root() -> Path:
    """``$QUANTBENCH_CACHE``, else ``$XDG_CACHE_HOME/quantbench``, else ``~/.cache/quantbench``."""
    explicit = os.environ.get(CACHE_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser().resolve()  # absolute, for the same reason as assets_root
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    if xdg and Path(xdg).is_absolute():  # the XDG spec says relative values are to be ignored
        return Path(xdg) / "quantbench"
    return Path.home() / ".cache" / "quantbench"


def default_model() -> str:
    """The offline yolo11n-coco.onnx when assets are configured, else ``yolo11n.pt``."""
    root = assets_root()
    if root is None:
        return PRETRAINED_MODEL
    path = root / ASSETS_MODEL
    if not path.is_file():
        raise ModelError(f"{path} does not exist; restore {ASSETS_MODEL.name} in the assets folder or pass the model "
                         "explicitly (--model / --qb-model).")
    return str(path)


def default_eval_data(*, num_images: int = SUBSET_IMAGES, seed: int = 0, source: CocoSource = COCO_VAL2017,
                      progress: bool = True) -> Path:
    """``<assets>/coco/val500``, else the downloaded evaluation subset of COCO val2017.

    ``num_images``, ``seed`` and ``source`` shape only the downloaded subset; the offline folder is
    used as it is.
    """
    return _default_data(ASSETS_EVAL_DATA, SubsetRole.EVAL, num_images, seed, source, progress)


def default_calib_data(*, num_images: int = SUBSET_IMAGES, seed: int = 0, source: CocoSource = COCO_VAL2017,
                       progress: bool = True) -> Path:
    """``<assets>/coco/calib500``, else the downloaded calibration subset (disjoint from evaluation's)."""
    return _default_data(ASSETS_CALIB_DATA, SubsetRole.CALIB, num_images, seed, source, progress)


def _default_data(offline: Path, role: SubsetRole, num_images: int, seed: int, source: CocoSource,
                  progress: bool) -> Path:
    root = assets_root()
    if root is None:
        return fetch_coco_subset(role, root=cache_root(), num_images=num_images, seed=seed, source=source,
                                 progress=progress)
    folder = root / offline
    if not (folder / "instances.json").is_file() or not (folder / "images").is_dir():
        raise DataError(
            f"{folder} is not a COCO folder (images/ + instances.json); restore it in the assets folder or unset "
            f"{ASSETS_ENV} to download COCO instead."
        )
    return folder
