"""The host pipeline alone: evaluation of real images with inference replayed, old vs new, side by side.

Each case times ``--host-rounds`` whole evaluations (decode, letterbox, NMS, COCO scoring: the
wall clock of ``quantbench.evaluation.evaluate``) with pytest-benchmark and records the CPU time of every
stage of its last round. The two pipelines must give the same metrics to 1e-4.
"""

from __future__ import annotations

import pytest

from bench_host.conftest import HostRun
from quantbench.data.dataset import CocoDataset
from quantbench.evaluation.evaluate import EvalSpec, HostPipeline, evaluate
from quantbench.evaluation.replay import ReplayRunner
from quantbench.records import EvalResult
from quantbench.stage_clock import Stage, StageClock

PIPELINES = {"reference": HostPipeline.reference(), "default": HostPipeline()}
METRICS = ("map50_95", "map50", "map75", "map_small", "map_medium", "map_large", "ar100")


@pytest.mark.parametrize("name", list(PIPELINES))
def test_host_pipeline(benchmark, name: str, batch_size: int, replay_runner: ReplayRunner,
                       host_dataset: CocoDataset, host_results: list[HostRun], host_rounds: int):
    pipeline = PIPELINES[name]
    clocks: list[StageClock] = []
    results: list[EvalResult] = []

    def one_round() -> None:
        replay_runner.rewind()
        clocks.append(StageClock())
        spec = EvalSpec("replay", name, batch_size=batch_size, pipeline=pipeline)
        results.append(evaluate(replay_runner, host_dataset, spec, clock=clocks[-1]))

    benchmark.pedantic(one_round, rounds=host_rounds, iterations=1, warmup_rounds=0)
    result, times = results[-1], clocks[-1].times()
    images = result.num_images
    assert images == len(host_dataset) and result.skipped_images == ()
    run = HostRun(pipeline=name, batch_size=batch_size, images=images,
                  images_per_s=images / benchmark.stats.stats.median, metrics=result.metrics,
                  stage_ms={s.value: times.ms_per_image(s, images) for s in Stage},
                  threads=pipeline.threads())
    benchmark.extra_info["host_pipeline"] = {"pipeline": name, "images": images, "images_per_s": run.images_per_s,
                                             "cpu_ms_per_image": run.stage_ms, "host_cpu_ms_per_image": run.host_cpu_ms,
                                             "threads": list(run.threads)}
    host_results.append(run)
    # Old and new, at every batch size, must agree on every figure (with the session's first case).
    first = host_results[0].metrics
    for metric in METRICS:
        assert getattr(result.metrics, metric) == pytest.approx(getattr(first, metric), abs=1e-4), metric
    assert result.metrics.per_class_ap.keys() == first.per_class_ap.keys()
    assert result.metrics.per_class_ap == pytest.approx(first.per_class_ap, abs=1e-4)

