"""Where defaults come from: the offline assets folder, or the user's cache (downloads).

The download path itself (no assets) is exercised against a local HTTP server in
``test_download.py::test_default_data_without_assets_downloads_into_the_user_cache``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from quantbench.build.export import validate_onnx
from quantbench.data import assets
from quantbench.errors import DataError, ModelError


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in (assets.ASSETS_ENV, assets.CACHE_ENV, "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


def test_with_assets_every_default_is_offline_and_nothing_is_downloaded(
    assets_dir: Path, clean_env: pytest.MonkeyPatch, tmp_path: Path
):
    clean_env.setenv(assets.ASSETS_ENV, str(assets_dir))
    clean_env.setenv(assets.CACHE_ENV, str(tmp_path / "user-cache"))
    assert assets.assets_root() == assets_dir
    model = assets.default_model()
    assert model == str(assets_dir / "models" / "yolo11n-coco.onnx")  # the COCO-trained YOLO11n
    info = validate_onnx(Path(model))
    assert info.num_classes == 80 and info.num_anchors == 8400 and info.name == "yolo11n-coco"
    assert assets.default_eval_data() == assets_dir / "coco" / "val500"
    assert assets.default_calib_data() == assets_dir / "coco" / "calib500"
    for folder in (assets.default_eval_data(), assets.default_calib_data()):
        assert len(json.loads((folder / "instances.json").read_text())["images"]) == 500
    assert not (tmp_path / "user-cache").exists()  # no download, no subset, not even the folder


def test_without_assets_the_model_is_ultralytics_pretrained_name(clean_env: pytest.MonkeyPatch):
    assert assets.assets_root() is None
    assert assets.default_model() == "yolo11n.pt"  # Ultralytics downloads it when it exports
    clean_env.setenv(assets.ASSETS_ENV, "  ")  # blank counts as unset
    assert assets.assets_root() is None


def test_cache_root_precedence(clean_env: pytest.MonkeyPatch, tmp_path: Path):
    assert assets.cache_root() == tmp_path / "home" / ".cache" / "quantbench"
    clean_env.setenv("XDG_CACHE_HOME", "relative/ignored")  # the XDG spec ignores relative values
    assert assets.cache_root() == tmp_path / "home" / ".cache" / "quantbench"
    clean_env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assets.cache_root() == tmp_path / "xdg" / "quantbench"
    clean_env.setenv(assets.CACHE_ENV, "~/qb")
    assert assets.cache_root() == tmp_path / "home" / "qb"


def test_relative_folders_are_made_absolute(clean_env: pytest.MonkeyPatch, tmp_path: Path):
    # `export QUANTBENCH_ASSETS=../shared/assets` must still point there after a chdir (ModelOpt's
    # scratch folder, the bench's build phase).
    (tmp_path / "work").mkdir()
    (tmp_path / "shared" / "assets").mkdir(parents=True)
    clean_env.chdir(tmp_path / "work")
    clean_env.setenv(assets.ASSETS_ENV, "../shared/assets")
    clean_env.setenv(assets.CACHE_ENV, "qb-cache")
    assert assets.assets_root() == (tmp_path / "shared" / "assets").resolve()
    assert assets.cache_root() == (tmp_path / "work" / "qb-cache").resolve()


def test_assets_variable_pointing_nowhere_is_a_data_error(clean_env: pytest.MonkeyPatch, tmp_path: Path):
    clean_env.setenv(assets.ASSETS_ENV, str(tmp_path / "missing"))
    with pytest.raises(DataError, match=r"QUANTBENCH_ASSETS=.*missing is not a folder; .*or unset it"):
        assets.default_eval_data()


def test_incomplete_assets_folder_names_what_is_missing(
    assets_dir: Path, clean_env: pytest.MonkeyPatch, tmp_path: Path
):
    partial = tmp_path / "assets"
    (partial / "coco" / "calib500").mkdir(parents=True)
    shutil.copy2(assets_dir / "coco" / "calib500" / "instances.json", partial / "coco" / "calib500")
    clean_env.setenv(assets.ASSETS_ENV, str(partial))
    with pytest.raises(ModelError, match=r"models/yolo11n-coco\.onnx does not exist; .*--model"):
        assets.default_model()
    with pytest.raises(DataError, match=r"coco/val500 is not a COCO folder"):
        assets.default_eval_data()
    with pytest.raises(DataError, match=r"coco/calib500 is not a COCO folder"):  # json but no images/
        assets.default_calib_data()
