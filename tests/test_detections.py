"""NMS must follow Ultralytics' validation protocol: checked against Ultralytics itself on real outputs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from quantbench.data.preprocess import load_image
from quantbench.errors import ConfigError, ModelError
from quantbench.evaluation.detections import Detections, NmsConfig, NmsKernel, postprocess


def ultralytics_nms(output: np.ndarray, cfg: NmsConfig) -> list[np.ndarray]:
    """Ultralytics' validator NMS; rows (x1, y1, x2, y2, score, class).

    Run in float64: Ultralytics offsets boxes by ``class * 7680`` px before NMS, which in float32
    rounds corners to 1/32 px for high classes and flips IoUs within ~1e-3 of the threshold.
    In float64 both implementations compute the same IoUs.
    """
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")  # imported first, Ultralytics uses torchvision.ops.nms (fast)
    from ultralytics.utils.nms import non_max_suppression

    out = non_max_suppression(
        torch.from_numpy(output).double(), cfg.conf, cfg.iou, multi_label=True, agnostic=False,
        max_det=cfg.max_det, max_nms=cfg.max_nms, max_time_img=1e6,
    )
    return [o.numpy() for o in out]


def assert_same(ours: Detections, theirs: np.ndarray) -> None:
    assert len(ours) == len(theirs)
    np.testing.assert_allclose(ours.boxes, theirs[:, :4], atol=1e-3)
    np.testing.assert_allclose(ours.scores, theirs[:, 4], rtol=1e-6)
    np.testing.assert_array_equal(ours.classes, theirs[:, 5].astype(np.int64))


@pytest.fixture(scope="module")
def yolov5n_outputs(yolov5n_onnx: Path, val500: Path) -> np.ndarray:
    """Raw yolov5n-coco outputs for 4 val images, batched: [4, 84, 25200]."""
    import onnxruntime as ort

    paths = sorted((val500 / "images").glob("*.jpg"))[:4]
    batch = np.stack([load_image(p)[0] for p in paths])
    session = ort.InferenceSession(str(yolov5n_onnx), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


@pytest.mark.slow
def test_agrees_with_ultralytics_nms_on_yolov5n_outputs(yolov5n_outputs: np.ndarray):
    cfg = NmsConfig()
    ours = postprocess(yolov5n_outputs, cfg)
    theirs = ultralytics_nms(yolov5n_outputs, cfg)
    assert len(ours) == len(yolov5n_outputs)
    for det, ref in zip(ours, theirs):
        assert len(det) == cfg.max_det  # dense real outputs: the cap is reached
        assert_same(det, ref)


def test_agrees_with_ultralytics_when_max_nms_truncates(yolov5n_outputs: np.ndarray):
    cfg = NmsConfig(conf=0.0005, max_nms=700, max_det=100)  # thousands of candidates, 700 kept for NMS
    for det, ref in zip(postprocess(yolov5n_outputs[:2], cfg), ultralytics_nms(yolov5n_outputs[:2], cfg)):
        assert_same(det, ref)


@pytest.mark.slow
def test_agrees_with_ultralytics_on_a_yolo11n_graph(yolo11n_onnx: Path, val500: Path):
    """YOLO11 head layout: 8400 anchors, DFL-decoded boxes, 80 classes.

    Random weights give three distinct scores (one per stride, ~1e-5..1.6e-4) whatever the
    image. The 32000 top-scored (stride-32) pairs get distinct scores from a random ranking, so
    both NMS orders are defined; conf=1e-4 admits exactly them: more than max_nms, so the
    truncation runs too. Boxes are the graph's own.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(yolo11n_onnx), providers=["CPUExecutionProvider"])
    image = load_image(sorted((val500 / "images").glob("*.jpg"))[0])[0][None]
    output = session.run(None, {session.get_inputs()[0].name: image})[0]
    assert output.shape == (1, 84, 8400)
    cfg = NmsConfig(conf=1e-4)
    top = output[0, 4:] > cfg.conf
    assert top.sum() > cfg.max_nms
    ranks = np.random.default_rng(0).permutation(int(top.sum())).astype(np.float32)
    output[0, 4:][top] = 2e-4 + ranks * 1e-9  # float32 steps here are ~2e-11: no ties
    det, = postprocess(output, cfg)
    assert len(det) > 0
    assert_same(det, ultralytics_nms(output, cfg)[0])


def raw_output(boxes_cxcywh: list[list[float]], scores: list[list[float]]) -> np.ndarray:
    """A [1, 4 + nc, anchors] output from per-anchor boxes and per-anchor class scores."""
    return np.concatenate([np.asarray(boxes_cxcywh, np.float32).T, np.asarray(scores, np.float32).T])[None]


def test_suppression_is_class_wise_and_multi_label():
    out = raw_output(
        [[100, 100, 50, 50], [102, 100, 50, 50], [300, 300, 40, 40]],
        [[0.9, 0.0], [0.8, 0.7], [0.0005, 0.0]],  # anchor 1 overlaps anchor 0: suppressed in class 0 only
    )
    det, = postprocess(out)
    assert det.classes.tolist() == [0, 1]
    np.testing.assert_allclose(det.scores, [0.9, 0.7])
    np.testing.assert_allclose(det.boxes, [[75, 75, 125, 125], [77, 75, 127, 125]])  # xyxy, input px
    assert det.boxes.dtype == np.float32 and det.classes.dtype == np.int64


def test_iou_threshold_is_respected():
    # IoU of two 100 px wide boxes shifted by d: (100 - d) / (100 + d); 20 px -> 0.667, 15 px -> 0.739
    for shift, kept in ((20, 2), (15, 1)):
        out = raw_output([[100, 100, 100, 100], [100 + shift, 100, 100, 100]], [[0.9], [0.8]])
        assert len(postprocess(out, NmsConfig(iou=0.7))[0]) == kept


def test_max_det_keeps_the_highest_scores():
    rng = np.random.default_rng(0)
    centres = rng.uniform(0, 6400, (400, 2))  # far apart: nothing suppressed
    boxes = np.concatenate([centres, np.full((400, 2), 10.0)], axis=1)
    scores = rng.uniform(0.01, 1, (400, 1))
    det, = postprocess(raw_output(boxes.tolist(), scores.tolist()), NmsConfig(max_det=300))
    assert len(det) == 300
    np.testing.assert_allclose(det.scores, np.sort(scores[:, 0])[::-1][:300].astype(np.float32))


def test_early_prefix_gives_the_same_boxes_as_nms_over_all_candidates():
    """The top boxes overlap heavily, so the first NMS prefix yields fewer than max_det boxes."""
    rng = np.random.default_rng(1)
    n = 3000
    cluster = np.column_stack([rng.normal(320, 1, (n // 2, 2)), np.full((n // 2, 2), 200.0)])
    spread = np.column_stack([rng.uniform(0, 640, (n // 2, 2)), rng.uniform(5, 50, (n // 2, 2))])
    boxes = np.concatenate([cluster, spread])
    scores = np.concatenate([rng.uniform(0.5, 1, n // 2), rng.uniform(0.01, 0.5, n // 2)])[:, None]
    cfg = NmsConfig(max_det=50)
    det, = postprocess(raw_output(boxes.tolist(), scores.tolist()), cfg)

    xyxy = np.concatenate([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, 2:]], axis=1)
    every = cv2.dnn.NMSBoxes(xyxy, scores[:, 0].astype(np.float32), cfg.conf, cfg.iou)[: cfg.max_det]
    assert len(det) == cfg.max_det
    np.testing.assert_allclose(det.scores, scores[every, 0].astype(np.float32))


def test_nothing_above_conf_gives_empty_detections():
    det, = postprocess(raw_output([[10, 10, 5, 5]], [[0.001, 0.0005]]))  # conf is strict: score > 0.001
    assert len(det) == 0 and det.boxes.shape == (0, 4)


def test_batch_items_are_independent():
    a = raw_output([[100, 100, 50, 50]], [[0.9, 0.1]])
    b = raw_output([[200, 200, 30, 30]], [[0.2, 0.6]])
    first, second = postprocess(np.concatenate([a, b]))
    assert first.classes.tolist() == [0, 1] and second.classes.tolist() == [1, 0]


@pytest.mark.parametrize("shape", [(84, 8400), (1, 4, 8400), (2, 84, 100, 1)])
def test_wrong_output_layout_is_a_model_error(shape):
    with pytest.raises(ModelError, match=r"not \[batch, 4 \+ classes, anchors\]"):
        postprocess(np.zeros(shape, np.float32))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"conf": 1.5}, "conf=1.5"),
        ({"iou": -0.1}, "iou=-0.1"),
        ({"max_det": 0}, "max_det=0"),
        ({"max_nms": 2.5}, "max_nms=2.5"),
    ],
)
def test_bad_nms_settings_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        NmsConfig(**kwargs)


def assert_identical(a: Detections, b: Detections) -> None:
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.classes, b.classes)


@pytest.mark.parametrize("cfg", [NmsConfig(), NmsConfig(iou=0.5, max_det=100), NmsConfig(conf=0.0005, max_nms=700)],
                         ids=["default", "iou0.5-max100", "max_nms-truncates"])
def test_per_class_kernel_keeps_exactly_the_batched_kernels_boxes(yolov5n_outputs: np.ndarray, cfg: NmsConfig):
    """Bit-identical boxes, scores, classes and order on real outputs (all 500 val500 images of
    yolo11n-coco and yolov5n-coco were checked the same way: no image differs)."""
    per_class = postprocess(yolov5n_outputs, cfg, NmsKernel.PER_CLASS)
    batched = postprocess(yolov5n_outputs, cfg, NmsKernel.BATCHED)
    for a, b in zip(per_class, batched):
        assert len(a) > 50
        assert_identical(a, b)


def test_per_class_kernel_on_tied_scores_and_a_single_class():
    """Equal scores keep the candidates' order in both kernels; one class is one NMS call."""
    rng = np.random.default_rng(2)
    centres = rng.uniform(50, 590, (600, 2))
    boxes = np.concatenate([centres, rng.uniform(20, 120, (600, 2))], axis=1)
    scores = np.zeros((600, 3), np.float32)
    scores[np.arange(600), rng.integers(0, 3, 600)] = rng.choice([0.3, 0.5, 0.9], 600)  # many ties
    out = raw_output(boxes.tolist(), scores.tolist())
    for cfg in (NmsConfig(max_det=40), NmsConfig()):
        assert_identical(postprocess(out, cfg, NmsKernel.PER_CLASS)[0], postprocess(out, cfg, NmsKernel.BATCHED)[0])
    single = raw_output(boxes.tolist(), scores[:, :1].tolist())
    assert_identical(postprocess(single, kernel=NmsKernel.PER_CLASS)[0], postprocess(single, kernel=NmsKernel.BATCHED)[0])
