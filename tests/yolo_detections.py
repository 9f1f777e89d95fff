"""Real yolo11n-coco detections on val500 images (ONNX Runtime CPU, conf 0.001), for the metric tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import onnxruntime as ort

from quantbench.data.dataset import CocoDataset
from quantbench.data.preprocess import iter_batches
from quantbench.evaluation.detections import Detections, postprocess


def yolo_detections(model: Path, ds: CocoDataset) -> dict[int, Detections]:
    """``model``'s boxes in original pixels, image id -> Detections."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    image_id_of = dict(zip(ds.files, ds.image_ids))
    dets = {}
    for batch in iter_batches(ds.files, 4):
        output = session.run(None, {"images": batch.images})[0]
        for det, path, box in zip(postprocess(output), batch.paths, batch.letterboxes):
            dets[image_id_of[path]] = dataclasses.replace(det, boxes=box.scale_boxes_back(det.boxes))
    return dets


def on_val500(assets_dir: Path, val500: Path, limit: int) -> tuple[CocoDataset, dict[int, Detections]]:
    """The first ``limit`` val500 images and yolo11n-coco's detections on them."""
    dataset = CocoDataset.load(val500, limit=limit)
    return dataset, yolo_detections(assets_dir / "models" / "yolo11n-coco.onnx", dataset)
