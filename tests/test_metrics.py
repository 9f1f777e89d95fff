"""COCO metrics through pycocotools and hotcoco: known answers on ground-truth-derived detections,
and both scorers agreeing exactly with the one-shot pycocotools COCOeval."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from quantbench.data.dataset import CocoDataset
from quantbench.data.preprocess import iter_batches
from quantbench.errors import DataError
from quantbench.evaluation.detections import Detections, postprocess
from quantbench.evaluation.metrics import CocoEvaluator, CocoScorer, HotcocoScorer, coco_metrics, make_scorer
from quantbench.records import CocoMetrics


@pytest.fixture(scope="module")
def val8(val500: Path) -> CocoDataset:
    return CocoDataset.load(val500, limit=8)


def ground_truth_detections(ds: CocoDataset, shift: float = 0.0, score_of=lambda i: 1.0) -> dict[int, Detections]:
    """Detections made from the ground truth boxes, optionally shifted right by ``shift`` x width."""
    data = json.loads(ds.annotations.read_text())
    class_of = {cat_id: k for k, cat_id in enumerate(ds.category_ids)}
    by_image: dict[int, list] = {i: [] for i in ds.image_ids}
    for ann in data["annotations"]:
        if ann["image_id"] in by_image:
            by_image[ann["image_id"]].append(ann)
    out = {}
    for image_id, anns in by_image.items():
        xywh = [a["bbox"] for a in anns]
        boxes = np.array([[x + shift * w, y, x + w + shift * w, y + h] for x, y, w, h in xywh], np.float32)
        out[image_id] = Detections(
            boxes=boxes.reshape(-1, 4),
            scores=np.array([score_of(i) for i in range(len(anns))], np.float32),
            classes=np.array([class_of[a["category_id"]] for a in anns], np.int64),
        )
    return out


def scorer_metrics(ds: CocoDataset, detections: dict[int, Detections],
                   evaluator: CocoEvaluator = CocoEvaluator.PYCOCOTOOLS) -> CocoMetrics:
    scorer = make_scorer(ds, evaluator)
    for image_id in reversed(list(detections)):  # any arrival order
        scorer.add(image_id, detections[image_id])
    return scorer.result()


def test_ground_truth_as_detections_scores_one(val8: CocoDataset):
    m = coco_metrics(val8, ground_truth_detections(val8))
    for name in ("map50_95", "map50", "map75", "ar100"):
        assert getattr(m, name) == pytest.approx(1.0), name
    # per-class AP covers exactly the classes present among the 8 images
    data = json.loads(val8.annotations.read_text())
    present = {a["category_id"] for a in data["annotations"] if a["image_id"] in set(val8.image_ids)}
    assert set(m.per_class_ap) == {val8.class_names[val8.category_ids.index(c)] for c in present}
    assert all(v == pytest.approx(1.0) for v in m.per_class_ap.values())


def test_boxes_at_iou_054_pass_map50_and_fail_map75(val8: CocoDataset):
    # shifted by 0.3 x width: IoU = 0.7 / 1.3 = 0.54 with their own ground truth box
    m = coco_metrics(val8, ground_truth_detections(val8, shift=0.3))
    assert m.map50 > 0.95
    assert m.map75 < 0.05
    assert 0.09 < m.map50_95 < 0.11  # matched at the 0.50 threshold only: ~1/10


def test_only_evaluated_images_count(val8: CocoDataset):
    dets = ground_truth_detections(val8)
    first_five = {i: dets[i] for i in val8.image_ids[:5]}  # the 3 others "skipped": not misses
    assert coco_metrics(val8, first_five).map50_95 == pytest.approx(1.0)
    # whereas an evaluated image with nothing detected is all misses
    missing_three = {**first_five, **{i: Detections.empty() for i in val8.image_ids[5:]}}
    assert coco_metrics(val8, missing_three).ar100 < 1.0


EVALUATORS = pytest.mark.parametrize("evaluator", list(CocoEvaluator), ids=[e.value for e in CocoEvaluator])


@EVALUATORS
def test_no_detections_at_all_scores_zero(val8: CocoDataset, evaluator: CocoEvaluator):
    m = coco_metrics(val8, {i: Detections.empty() for i in val8.image_ids})
    assert (m.map50_95, m.map50, m.ar100) == (0.0, 0.0, 0.0)
    assert m == scorer_metrics(val8, {i: Detections.empty() for i in val8.image_ids}, evaluator)


@EVALUATORS
def test_evaluators_print_nothing(val8: CocoDataset, evaluator: CocoEvaluator, capfd):
    coco_metrics(val8, ground_truth_detections(val8), evaluator)
    scorer_metrics(val8, ground_truth_detections(val8), evaluator)
    assert capfd.readouterr().out == ""  # capfd: hotcoco is native code, it would print on fd 1


@EVALUATORS
def test_scorer_equals_one_shot_cocoeval_on_synthetic_detections(val8: CocoDataset, evaluator: CocoEvaluator):
    rng = np.random.default_rng(0)
    dets = ground_truth_detections(val8, shift=0.1, score_of=lambda i: float(rng.uniform(0.05, 1)))
    noisy = {}
    for image_id, d in dets.items():  # plus false positives of random classes
        extra = rng.uniform(0, 400, (20, 2))
        boxes = np.concatenate([d.boxes, np.concatenate([extra, extra + 60], axis=1).astype(np.float32)])
        noisy[image_id] = Detections(boxes, np.concatenate([d.scores, rng.uniform(0, 1, 20).astype(np.float32)]),
                                     np.concatenate([d.classes, rng.integers(0, 80, 20)]))
    one_shot = coco_metrics(val8, noisy)
    assert 0.1 < one_shot.map50_95 < 0.9
    assert_equal_metrics(scorer_metrics(val8, noisy, evaluator), one_shot)


def assert_equal_metrics(got: CocoMetrics, want: CocoMetrics) -> None:
    """Equal to 1e-12 (pycocotools' own scorer is bit-identical; hotcoco measured so too)."""
    assert dataclasses.asdict(got).keys() == dataclasses.asdict(want).keys()
    for name in ("map50_95", "map50", "map75", "map_small", "map_medium", "map_large", "ar100"):
        assert getattr(got, name) == pytest.approx(getattr(want, name), abs=1e-12), name
    assert got.per_class_ap.keys() == want.per_class_ap.keys()
    assert got.per_class_ap == pytest.approx(want.per_class_ap, abs=1e-12)


@pytest.mark.slow
@EVALUATORS
def test_scorer_equals_one_shot_cocoeval_on_yolov5n_detections(yolov5n_onnx: Path, val500: Path,
                                                               evaluator: CocoEvaluator):
    import onnxruntime as ort

    ds = CocoDataset.load(val500, limit=6)
    session = ort.InferenceSession(str(yolov5n_onnx), providers=["CPUExecutionProvider"])
    dets = {}
    for batch in iter_batches(ds.files, 3):
        output = session.run(None, {"images": batch.images})[0]
        for det, path, box in zip(postprocess(output), batch.paths, batch.letterboxes):
            dets[ds.image_ids[ds.files.index(path)]] = dataclasses.replace(det, boxes=box.scale_boxes_back(det.boxes))
    one_shot = coco_metrics(ds, dets)
    assert one_shot.map50_95 > 0.15  # a trained detector: real, non-trivial numbers
    assert_equal_metrics(scorer_metrics(ds, dets, evaluator), one_shot)
    assert_equal_metrics(coco_metrics(ds, dets, evaluator), one_shot)


def test_class_index_outside_the_dataset_categories(val8: CocoDataset):
    bad = Detections(np.array([[0, 0, 10, 10]], np.float32), np.array([0.9], np.float32), np.array([80]))
    dets = {val8.image_ids[0]: bad}
    with pytest.raises(DataError, match="class index 80 but dataset val500\\[:8\\] has 80 categories"):
        coco_metrics(val8, dets)
    with pytest.raises(DataError, match="class index 80"):
        scorer_metrics(val8, dets)
    with pytest.raises(DataError, match="class index 80"):
        scorer_metrics(val8, dets, CocoEvaluator.HOTCOCO)


def test_unknown_image_ids_and_nothing_evaluated(val8: CocoDataset):
    with pytest.raises(DataError, match=r"image ids \[123456789\] are not among the images"):
        coco_metrics(val8, {123456789: Detections.empty()})
    with pytest.raises(DataError, match="image id 123456789 is not in dataset"):
        CocoScorer(val8).add(123456789, Detections.empty())
    with pytest.raises(DataError, match="no images of dataset"):
        coco_metrics(val8, {})
    with pytest.raises(DataError, match="no images of dataset"):
        CocoScorer(val8).result()
    with pytest.raises(DataError, match="image id 123456789 is not in dataset"):
        HotcocoScorer(val8).add(123456789, Detections.empty())
    with pytest.raises(DataError, match="no images of dataset"):
        HotcocoScorer(val8).result()


@EVALUATORS
def test_scorer_refuses_an_image_twice(val8: CocoDataset, evaluator: CocoEvaluator):
    scorer = make_scorer(val8, evaluator)
    scorer.add(val8.image_ids[0], Detections.empty())
    with pytest.raises(DataError, match="scored twice"):
        scorer.add(val8.image_ids[0], Detections.empty())


def test_annotations_without_area_use_the_box_area(val8: CocoDataset, tmp_path: Path):
    data = json.loads(val8.annotations.read_text())
    for ann in data["annotations"]:
        ann["area"] = ann["bbox"][2] * ann["bbox"][3]
    (tmp_path / "with_area.json").write_text(json.dumps(data))
    for ann in data["annotations"]:
        del ann["area"], ann["iscrowd"]
    (tmp_path / "without_area.json").write_text(json.dumps(data))
    dets = ground_truth_detections(val8, shift=0.2)
    with_area = CocoDataset.load(None, images=val8.images_dir, annotations=tmp_path / "with_area.json", limit=8)
    without = CocoDataset.load(None, images=val8.images_dir, annotations=tmp_path / "without_area.json", limit=8)
    assert coco_metrics(without, dets) == coco_metrics(with_area, dets)
    assert_equal_metrics(coco_metrics(without, dets, CocoEvaluator.HOTCOCO), coco_metrics(with_area, dets))


def test_missing_hotcoco_is_one_sentence(val8: CocoDataset, monkeypatch):
    import sys

    from quantbench.errors import ConfigError

    monkeypatch.setitem(sys.modules, "hotcoco", None)  # makes `import hotcoco` raise ImportError
    with pytest.raises(ConfigError, match=r"hotcoco package is not installed; pip install hotcoco"):
        HotcocoScorer(val8)
