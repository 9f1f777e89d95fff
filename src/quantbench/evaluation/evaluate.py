"""Pipelined COCO evaluation of one opened engine: decode || infer || NMS, then the COCO scorer.

Three stages overlap so that inference is the only thing the wall clock waits for:

* a thread pool decodes and letterboxes images ahead of inference (``preprocess.iter_batches``);
* the calling thread runs ``runner.infer`` on one batch after another (timed, and nothing else);
* a second thread pool behind it runs NMS image by image and maps boxes back to original pixels,
  handing each image to the scorer (``metrics.make_scorer``).

OpenCV, numpy and the inference runtimes release the GIL, so the stages really run in parallel,
and both pools have one thread per core: with a fast GPU the host work is what the wall clock
waits for. The default scorer (hotcoco) matches every image natively after the last batch; the
reference one (pycocotools) matches each image as it arrives and leaves ``accumulate`` for the end.
``HostPipeline`` (in the `EvalSpec`) says which; ``HostPipeline.reference()`` is the single-NMS-thread, pycocotools
pipeline of earlier releases, kept to check the numbers against and to measure the speed-up.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from quantbench.backends.base import Runner
from quantbench.data.dataset import CocoDataset
from quantbench.data.preprocess import IMGSZ, UNREADABLE, Batch, Letterbox, default_workers, iter_batches
from quantbench.errors import BackendError, ConfigError, DataError
from quantbench.evaluation.detections import Detections, NmsConfig, NmsKernel, postprocess
from quantbench.evaluation.matches import MatchTable
from quantbench.evaluation.metrics import CocoEvaluator, make_scorer
from quantbench.records import EvalResult, EvalTiming
from quantbench.stage_clock import Stage, StageClock

# Raw outputs waiting for NMS are large (2.8 MB per image for YOLO11 at 640, 8.5 MB for YOLOv5):
# at most this many per NMS thread are held in memory.
_PENDING_PER_NMS_WORKER = 2


@dataclass(frozen=True)
class HostPipeline:
    """How the host side of an evaluation runs; every choice gives the same metrics (tested)."""

    evaluator: CocoEvaluator = CocoEvaluator.HOTCOCO
    nms_kernel: NmsKernel = NmsKernel.PER_CLASS
    nms_workers: int = 0  # NMS threads; 0: one per core
    decode_workers: int = 0  # decoding threads; 0: one per core

    def __post_init__(self) -> None:
        for name in ("nms_workers", "decode_workers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name}={value!r} is not a thread count; pass 0 (one per core) or more.")

    @classmethod
    def reference(cls) -> HostPipeline:
        """Earlier releases: pycocotools matching and batched NMS on one thread, at most 8 decoders."""
        return cls(evaluator=CocoEvaluator.PYCOCOTOOLS, nms_kernel=NmsKernel.BATCHED, nms_workers=1,
                   decode_workers=max(2, min(8, os.cpu_count() or 2)))

    def threads(self) -> tuple[int, int]:
        """(decoding threads, NMS threads) this pipeline runs with on this machine."""
        return self.decode_workers or default_workers(), self.nms_workers or default_workers()


@dataclass(frozen=True)
class EvalSpec:
    """What one evaluation is of and how it runs; the metrics depend on all but ``pipeline``."""

    model: str
    variant: str
    batch_size: int = 1  # the engine's batch: the last, partial batch is padded to it
    nms: NmsConfig = NmsConfig()
    untrained: bool = False  # random weights (built from a .yaml): recorded, the mAP means nothing
    imgsz: int = IMGSZ  # the model's square input side (``ModelInfo.input_size``)
    pipeline: HostPipeline = HostPipeline()  # scorer and thread counts (the metrics do not depend on it)

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise DataError(f"batch size {self.batch_size!r} is not a positive integer; pass 1 or more.")


def evaluate(runner: Runner, dataset: CocoDataset, spec: EvalSpec, *, progress: bool = False,
             clock: StageClock | None = None) -> EvalResult:
    """mAP of ``runner`` on ``dataset``, with the time spent in inference and overall (`evaluate_with_matches`)."""
    return _evaluate(runner, dataset, spec, progress=progress, clock=clock)[0]


def evaluate_with_matches(runner: Runner, dataset: CocoDataset, spec: EvalSpec, *, progress: bool = False,
                          clock: StageClock | None = None) -> tuple[EvalResult, MatchTable]:
    """`evaluate`, plus the per-image matches the mAP was accumulated from (for its bootstrap interval)."""
    result, scorer = _evaluate(runner, dataset, spec, progress=progress, clock=clock)
    return result, scorer.scorer.match_table()


def _evaluate(runner: Runner, dataset: CocoDataset, spec: EvalSpec, *, progress: bool,
              clock: StageClock | None) -> tuple[EvalResult, _ImageScorer]:
    """mAP of ``runner`` on ``dataset``, with the time spent in inference and overall, and its scorer.

    ``timing.total_s`` runs from this call to the end of COCO scoring (the dataset is loaded by
    the caller). ``clock``, when given, receives the CPU time of every stage (``stage_clock``).

    Images that are missing, cannot be decoded or decode to another size than the annotations
    declare are skipped (a warning each), listed in ``EvalResult.skipped_images`` and counted by
    reason in ``EvalResult.skip_reasons``; the metrics cover the images that were evaluated.
    """
    start = time.perf_counter()
    # Built here, not in a worker: reading the ground truth may print (silenced by swapping the
    # process-wide sys.stdout), which must not happen while other threads might write.
    scorer = _ImageScorer(dataset, spec.nms, spec.pipeline, clock)
    skipped: list[str] = []
    reasons: Counter[str] = Counter()
    bar = tqdm(total=len(dataset), desc=f"eval {spec.model}/{spec.variant}", unit="img", disable=not progress,
               leave=False)

    def on_skip(path: Path, reason: str) -> None:
        skipped.append(str(path))
        reasons[getattr(reason, "kind", UNREADABLE)] += 1
        bar.update(1)

    with bar:
        # Reused batch arrays: _infer_and_score is done with a batch (inferred, outputs copied)
        # before it asks for the next one.
        batches = iter_batches(dataset.files, spec.batch_size, size=spec.imgsz, workers=spec.pipeline.threads()[0],
                               on_skip=on_skip, clock=clock, reuse_buffers=True,
                               expected_sizes=dataset.declared_sizes())
        inference_s = _infer_and_score(runner, batches, spec.batch_size, dataset, scorer, bar)
    num_images = len(scorer.scorer)
    with clock.measure(Stage.SCORING, num_images, whole_process=True) if clock else contextlib.nullcontext():
        metrics = scorer.scorer.result()
    total_s = time.perf_counter() - start
    info = runner.info()
    result = EvalResult(
        model=spec.model, variant=spec.variant, backend=info.backend, device=info.device, dataset=dataset.name,
        num_images=num_images, skipped_images=tuple(skipped), untrained=spec.untrained, metrics=metrics,
        timing=EvalTiming(inference_s=inference_s, total_s=total_s, images_per_s=num_images / total_s),
        simulated=info.simulated, skip_reasons=dict(reasons),
    )
    return result, scorer


class _ImageScorer:
    """NMS of one image's raw output, boxes back to original pixels, then the COCO scorer."""

    def __init__(self, dataset: CocoDataset, nms: NmsConfig, pipeline: HostPipeline, clock: StageClock | None):
        self.scorer = make_scorer(dataset, pipeline.evaluator)
        self.workers = pipeline.threads()[1]
        self._image_id_of = dict(zip(dataset.files, dataset.image_ids))
        self._nms, self._kernel, self._clock = nms, pipeline.nms_kernel, clock
        self._lock = threading.Lock()  # pycocotools' scorer is not thread-safe (hotcoco's add is cheap)

    def __call__(self, output: np.ndarray, path: Path, box: Letterbox) -> None:
        with self._measure(Stage.NMS):
            det = postprocess(output[None], self._nms, self._kernel)[0]
            det = Detections(box.scale_boxes_back(det.boxes), det.scores, det.classes)
        with self._lock, self._measure(Stage.MATCHING):
            self.scorer.add(self._image_id_of[path], det)

    def _measure(self, stage: Stage):
        return self._clock.measure(stage) if self._clock else contextlib.nullcontext()

    @property
    def clock(self) -> StageClock | None:
        return self._clock


def _infer_and_score(
    runner: Runner, batches: Iterable[Batch], batch_size: int, dataset: CocoDataset, score: _ImageScorer, bar: tqdm
) -> float:
    """Infer batch after batch on this thread while NMS threads score the previous ones; inference seconds."""
    inference_s = 0.0
    # Two batches' outputs may wait, so that the next batch is inferred while this one is scored.
    max_pending = max(_PENDING_PER_NMS_WORKER * score.workers, 2 * batch_size)
    with ThreadPoolExecutor(max_workers=score.workers, thread_name_prefix="qb-nms") as nms_pool:
        pending: deque[Future] = deque()
        for batch in batches:
            images = _pad_to(batch.images, batch_size)  # engines built for a fixed batch take it whole
            t0 = time.perf_counter()
            output = runner.infer(images)
            elapsed = time.perf_counter() - t0
            inference_s += elapsed
            if score.clock:
                score.clock.add(Stage.INFERENCE, elapsed, len(batch))  # wall: runtimes infer in their own threads
            _check_output(output, images, dataset)
            for i, (path, box) in enumerate(zip(batch.paths, batch.letterboxes)):
                # The one copy of an output: it is valid until the runner's next infer (`Runner`: TensorRT
                # hands out its pinned buffer) and the NMS threads read it while the next batch runs.
                pending.append(nms_pool.submit(score, np.array(output[i], copy=True), path, box))
            while len(pending) > max_pending or (pending and pending[0].done()):
                pending.popleft().result()  # re-raises an NMS failure here, not at the end
            bar.update(len(batch))
        while pending:
            pending.popleft().result()
    return inference_s


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
