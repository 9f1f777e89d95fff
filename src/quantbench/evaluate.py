"""Pipelined COCO evaluation of one opened engine: decode || infer || NMS, then pycocotools.

Three stages overlap so that inference is the only thing the wall clock waits for:

* a thread pool decodes and letterboxes images ahead of inference (``preprocess.iter_batches``);
* the calling thread runs ``runner.infer`` on one batch after another (timed, and nothing else);
* one worker thread behind it runs NMS, maps boxes back to original pixels and runs
  pycocotools' per-image matching (``metrics.CocoScorer``).

OpenCV, numpy and the inference runtimes release the GIL, so the stages really run in parallel.
Only COCOeval's ``accumulate``/``summarize`` are left after the last batch.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .backends.base import Runner
from .dataset import CocoDataset
from .detections import Detections, NmsConfig, postprocess
from .errors import BackendError, DataError
from .metrics import CocoScorer
from .preprocess import IMGSZ, Batch, iter_batches
from .records import EvalResult, EvalTiming

# Raw outputs waiting for NMS are large (~8 MB per 640 image); this bounds them in memory.
_MAX_PENDING_NMS = 4


def evaluate(
    runner: Runner,
    dataset: CocoDataset,
    *,
    model: str,
    variant: str,
    batch_size: int = 1,
    nms: NmsConfig = NmsConfig(),
    untrained: bool = False,
    progress: bool = True,
    imgsz: int = IMGSZ,
) -> EvalResult:
    """mAP of ``runner`` on ``dataset``, with the time spent in inference and overall.

    ``imgsz`` is the model's square input side (``ModelInfo.input_size``). ``timing.total_s``
    runs from this call to the end of COCOeval (the dataset is loaded by the caller).

    Images that are missing or cannot be decoded are skipped (a warning each) and listed in
    ``EvalResult.skipped_images``; the metrics cover the images that were evaluated.
    """
    start = time.perf_counter()
    if batch_size < 1:
        raise DataError(f"batch size {batch_size} is not a positive integer; pass 1 or more.")
    image_id_of = {path: image_id for path, image_id in zip(dataset.files, dataset.image_ids)}
    skipped: list[str] = []
    inference_s = 0.0

    # Built here, not in the worker: reading the ground truth prints (silenced by swapping the
    # process-wide sys.stdout), which must not happen while other threads might write.
    scorer = CocoScorer(dataset)

    def nms_and_score(output: np.ndarray, batch: Batch) -> None:
        for det, path, box in zip(postprocess(output, nms), batch.paths, batch.letterboxes):
            scorer.add(image_id_of[path], Detections(box.scale_boxes_back(det.boxes), det.scores, det.classes))

    bar = tqdm(total=len(dataset), desc=f"eval {model}/{variant}", unit="img", disable=not progress, leave=False)
    with bar, ThreadPoolExecutor(max_workers=1, thread_name_prefix="qb-nms") as nms_worker:
        pending: deque[Future] = deque()

        def on_skip(path: Path, reason: str) -> None:
            skipped.append(str(path))
            bar.update(1)

        for batch in iter_batches(dataset.files, batch_size, size=imgsz, on_skip=on_skip):
            images = _pad_to(batch.images, batch_size)  # engines built for a fixed batch take it whole
            t0 = time.perf_counter()
            output = runner.infer(images)
            inference_s += time.perf_counter() - t0
            _check_output(output, images, dataset)
            # A copy: a runner may hand out the same host buffer on every call (TensorRT-style
            # pinned outputs) and the NMS worker reads it while the next batch runs.
            output = np.array(output[: len(batch)], copy=True)
            pending.append(nms_worker.submit(nms_and_score, output, batch))
            while len(pending) > _MAX_PENDING_NMS or (pending and pending[0].done()):
                pending.popleft().result()  # re-raises an NMS failure here, not at the end
            bar.update(len(batch))
        while pending:
            pending.popleft().result()

    num_images = len(scorer)
    metrics = scorer.result()
    total_s = time.perf_counter() - start
    facts = runner.describe()
    return EvalResult(
        model=model,
        variant=variant,
        backend=str(facts.get("backend", type(runner).__name__)),
        device=str(facts.get("device", "unknown")),
        dataset=dataset.name,
        num_images=num_images,
        skipped_images=tuple(skipped),
        untrained=untrained,
        metrics=metrics,
        timing=EvalTiming(inference_s=inference_s, total_s=total_s, images_per_s=num_images / total_s),
        simulated=facts.get("simulated"),
    )


def _pad_to(images: np.ndarray, batch_size: int) -> np.ndarray:
    if len(images) == batch_size:
        return images
    pad = np.zeros((batch_size - len(images), *images.shape[1:]), dtype=images.dtype)
    return np.concatenate([images, pad])


def _check_output(output: np.ndarray, images: np.ndarray, dataset: CocoDataset) -> None:
    if output.ndim != 3 or output.shape[0] != len(images):
        raise BackendError(
            f"the engine returned an output of shape {tuple(output.shape)} for a batch of {len(images)}; "
            "it must be [batch, 4 + classes, anchors]: rebuild the engine from a raw YOLO detection export."
        )
    num_classes = output.shape[1] - 4
    if num_classes != len(dataset.category_ids):
        raise DataError(
            f"the model predicts {num_classes} classes but dataset {dataset.name} ({dataset.annotations}) "
            f"has {len(dataset.category_ids)} categories; evaluate on a dataset with the model's classes."
        )
