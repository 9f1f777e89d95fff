"""A runner that replays a real model's recorded outputs, so that evaluation times the host alone.

The outputs are computed once with ONNX Runtime on the CPU (``record_outputs``, cached as one
``.npy`` under the quantbench cache) and handed back batch by batch in dataset order: inference
then costs a memory view, and what the wall clock measures is decoding, NMS and COCO scoring,
on real detections. Each batch is checked against a fingerprint of the image it replays for,
so a pipeline that reordered or dropped images fails loudly instead of scoring wrong outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from quantbench.backends.base import BuildOptions, InputSpec, Runner, RunnerInfo, TimingSamples
from quantbench.backends.ort import OrtBackend
from quantbench.cache import ArtifactCache, hash_key, sha256_file
from quantbench.data.dataset import CocoDataset
from quantbench.data.preprocess import iter_batches
from quantbench.errors import BackendError


def fingerprint(image: np.ndarray) -> float:
    """A cheap checksum of one CHW network input (a 1/40 grid of its pixels)."""
    return float(image[:, ::40, ::40].sum(dtype=np.float64))


class ReplayRunner(Runner):
    """Hands back ``outputs[i]`` for the i-th image it is given; rows past the end are zeros (padding)."""

    input_name = "images"
    output_name = "output0"

    def __init__(self, outputs: np.ndarray, fingerprints: np.ndarray):
        if len(outputs) != len(fingerprints):
            raise BackendError(f"{len(outputs)} recorded outputs for {len(fingerprints)} fingerprints; record again.")
        self._outputs, self._fingerprints = outputs, fingerprints
        self._next = 0
        self.input_spec = InputSpec(self.input_name, (3, None, None))  # the fingerprints check the images

    def rewind(self) -> None:
        self._next = 0

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        start, count = self._next, min(len(batch), len(self._outputs) - self._next)
        for i in range(count):
            if fingerprint(batch[i]) != self._fingerprints[start + i]:
                raise BackendError(
                    f"replayed input {start + i} is not the image its output was recorded for; "
                    "evaluate the recorded dataset in its order (no image skipped)."
                )
        self._next += len(batch)
        rows = self._outputs[start:start + count]
        if count == len(batch):
            return rows
        return np.concatenate([rows, np.zeros((len(batch) - count, *self._outputs.shape[1:]), np.float32)])

    def _time(self, batch: np.ndarray, *, warmup: int, iterations: int) -> TimingSamples:
        raise BackendError("a replay runner has no inference to time; time a real engine.")

    def info(self) -> RunnerInfo:
        return RunnerInfo(backend="replay", device="host (recorded outputs)", input=self.input_spec)


def record_outputs(model: Path, dataset: CocoDataset, cache: ArtifactCache, imgsz: int = 640) -> np.ndarray:
    """``[images, 4 + classes, anchors]`` outputs of ``model`` on ``dataset`` (ORT CPU), cached, memory-mapped."""
    key = hash_key("replay-v1", sha256_file(model), cache.file_digests(list(dataset.files)), imgsz)

    def build(tmp: Path) -> dict[str, Any]:
        with OrtBackend(use_cuda=False).open_onnx(model, BuildOptions()) as runner:
            recorded = None
            row = 0
            for batch in iter_batches(dataset.files, batch_size=8, size=imgsz):
                output = runner.infer(batch.images)
                if recorded is None:
                    recorded = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                                         shape=(len(dataset.files), *output.shape[1:]))
                recorded[row:row + len(batch)] = output
                row += len(batch)
        if recorded is None or row != len(dataset.files):
            raise BackendError(f"only {row} of {len(dataset.files)} images of {dataset.images_dir} decode; "
                               "replay needs every image readable.")
        recorded.flush()
        return {"model": str(model), "dataset": dataset.name, "images": row}

    entry = cache.get_or_build("replay", key, ".npy", build)
    return np.load(entry.path, mmap_mode="r")


def input_fingerprints(dataset: CocoDataset, imgsz: int = 640) -> np.ndarray:
    return np.array([fingerprint(image) for batch in iter_batches(dataset.files, 8, size=imgsz)
                     for image in batch.images])
