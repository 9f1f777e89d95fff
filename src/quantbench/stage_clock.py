"""Where the host's CPU time goes during one evaluation, stage by stage (``evaluate(clock=...)``).

Each stage is timed with the CPU clock of the thread that runs it (``time.thread_time``), summed
over the threads of a pool, so the figures say what a stage costs per image whatever the number
of cores, and their sum against the wall time says how well the pipeline overlaps. The final
scoring runs alone after the last image, in the scorer's own native threads for hotcoco, so it is
timed with the process's CPU clock (``time.process_time``), which counts those threads too.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum


class Stage(Enum):
    DECODE = "decode+letterbox"  # JPEG decode, resize, pad, float CHW conversion (decode pool)
    INFERENCE = "inference"  # runner.infer, on the calling thread
    NMS = "nms"  # candidate selection, NMS, boxes back to original pixels (NMS pool)
    MATCHING = "matching"  # per-image COCO matching done while images still arrive (scorer.add)
    SCORING = "final scoring"  # what the scorer leaves for the end: accumulate (and, for hotcoco, matching)


@dataclass(frozen=True)
class StageTimes:
    """CPU seconds per stage and how many items (images) each stage handled."""

    cpu_s: dict[Stage, float]
    items: dict[Stage, int]

    def ms_per_image(self, stage: Stage, images: int) -> float:
        return 1e3 * self.cpu_s.get(stage, 0.0) / max(images, 1)


class StageClock:
    """Thread-safe accumulator of CPU time per stage; pass one to ``evaluate`` to fill it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cpu_s: dict[Stage, float] = {}
        self._items: dict[Stage, int] = {}

    @contextlib.contextmanager
    def measure(self, stage: Stage, items: int = 1, *, whole_process: bool = False) -> Iterator[None]:
        clock = time.process_time if whole_process else time.thread_time
        start = clock()
        try:
            yield
        finally:
            self.add(stage, clock() - start, items)

    def add(self, stage: Stage, cpu_s: float, items: int = 1) -> None:
        with self._lock:
            self._cpu_s[stage] = self._cpu_s.get(stage, 0.0) + cpu_s
            self._items[stage] = self._items.get(stage, 0) + items

    def times(self) -> StageTimes:
        with self._lock:
            return StageTimes(cpu_s=dict(self._cpu_s), items=dict(self._items))
