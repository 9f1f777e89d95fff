"""MatchTable: from both COCO scorers on real yolo11n-coco detections, mAPs equal to the scorers',
saved and loaded unchanged."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest
from yolo_detections import on_val500

from quantbench.data.dataset import CocoDataset, read_instances
from quantbench.errors import DataError
from quantbench.evaluation.detections import Detections
from quantbench.evaluation.matches import MatchTable
from quantbench.evaluation.metrics import CocoEvaluator, coco_metrics, coco_metrics_and_matches, make_scorer

EVALUATORS = pytest.mark.parametrize("evaluator", list(CocoEvaluator), ids=lambda e: e.value)


@pytest.fixture(scope="module")
def val24_and_detections(assets_dir: Path, val500: Path) -> tuple[CocoDataset, dict[int, Detections]]:
    return on_val500(assets_dir, val500, 24)


@pytest.fixture(scope="module")
def val24(val24_and_detections) -> CocoDataset:
    return val24_and_detections[0]


@pytest.fixture(scope="module")
def yolo24(val24_and_detections) -> dict[int, Detections]:
    return val24_and_detections[1]


@pytest.mark.slow
@EVALUATORS
def test_table_maps_equal_the_scorers_on_yolo11n(val24: CocoDataset, yolo24: dict[int, Detections],
                                                 evaluator: CocoEvaluator):
    metrics, table = coco_metrics_and_matches(val24, yolo24, evaluator)
    assert metrics == coco_metrics(val24, yolo24, evaluator)  # the additive API changes no number
    assert metrics.map50_95 > 0.2  # a trained detector: real, non-trivial numbers
    assert table.map50_95() == pytest.approx(metrics.map50_95, abs=1e-12)
    assert table.map50() == pytest.approx(metrics.map50, abs=1e-12)
    assert table.image_ids.tolist() == sorted(yolo24)
    # top 100 per image and category, as COCOeval counts them
    assert len(table.det_scores) == sum(min(100, int((d.classes == c).sum())) for d in yolo24.values()
                                        for c in range(80))


def test_both_scorers_give_the_same_table(val24: CocoDataset, yolo24: dict[int, Detections]):
    _, reference = coco_metrics_and_matches(val24, yolo24, CocoEvaluator.PYCOCOTOOLS)
    _, hotcoco = coco_metrics_and_matches(val24, yolo24, CocoEvaluator.HOTCOCO)
    for field in dataclasses.fields(MatchTable):
        np.testing.assert_array_equal(getattr(hotcoco, field.name), getattr(reference, field.name), err_msg=field.name)


def test_subset_of_images_and_scorer_reuse(val24: CocoDataset, yolo24: dict[int, Detections]):
    first = dict(list(yolo24.items())[:10])
    scorer = make_scorer(val24, CocoEvaluator.HOTCOCO)
    for image_id, det in first.items():
        scorer.add(image_id, det)
    table = scorer.match_table()  # before result() too
    assert table.map50_95() == pytest.approx(scorer.result().map50_95, abs=1e-12)
    assert table.num_images == 10 and table.gt_counts.shape == (80, 10)
    rest = next(i for i in yolo24 if i not in first)
    scorer.add(rest, yolo24[rest])  # an image added after result(): the next table includes it
    assert scorer.match_table().num_images == 11


def test_crowd_ground_truth_is_not_counted(val24: CocoDataset, yolo24: dict[int, Detections]):
    _, table = coco_metrics_and_matches(val24, yolo24)
    anns = [a for a in read_instances(val24.annotations)["annotations"] if a["image_id"] in set(yolo24)]
    assert table.gt_counts.sum() == sum(1 for a in anns if not a.get("iscrowd", 0))


def test_save_and_load_round_trip(val24: CocoDataset, yolo24: dict[int, Detections], tmp_path: Path):
    _, table = coco_metrics_and_matches(val24, yolo24)
    path = table.save(tmp_path / "sub" / "matches.npz")
    loaded = MatchTable.load(path)
    for field in dataclasses.fields(MatchTable):
        np.testing.assert_array_equal(getattr(loaded, field.name), getattr(table, field.name))
    assert loaded.map50_95() == table.map50_95()
    assert pickle.loads(pickle.dumps(table)).map50_95() == table.map50_95()  # process pools can ship it
    assert [p.name for p in path.parent.iterdir()] == ["matches.npz"]  # no temporary left behind


def test_load_refuses_other_files(tmp_path: Path):
    other = tmp_path / "other.npz"
    np.savez(other, something=np.zeros(3))
    with pytest.raises(DataError, match="other.npz is not a match table"):
        MatchTable.load(other)
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="broken.npz cannot be read as a match table"):
        MatchTable.load(broken)
