"""Measuring graphs derived from one Q/DQ model: output agreement with FP32 and probe scores, cached.

The cheap proxies (`output_agreement`): SQNR in dB and cosine similarity of a graph's raw output
against the FP32 model's, plus the SQNR of the class-score rows alone (the raw output's box rows
are in pixels and dominate the whole-output SQNR) and of the box rows weighted by confidence. The
real score (`Probe`): mAP50-95 on a probe split (`CocoProbe`), or a label-free output error
(`OutputErrorProbe`). `GraphMeter` names each derived graph by the set of groups left INT8 and
caches every measurement by content, so an interrupted analysis resumes where it stopped.

A probe that keeps its evaluation's per-image matches (`MatchingProbe`: `CocoProbe`) also gives
each scored graph's `matches.MatchTable` (cached beside its score, as ``.npz``), and from two of
them the paired-bootstrap interval of the drop between the graphs on the same probe images
(`GraphMeter.probe_drop`, `uncertainty.paired_bootstrap`, cached too): the bench gate's method.
Scores cached before tables were kept stay valid; a table asked for later is measured then.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import tempfile
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import onnx

from quantbench.backends.base import BuildOptions
from quantbench.backends.ort import OrtBackend
from quantbench.build.qdq_graph import QdqModel
from quantbench.cache import ArtifactCache, hash_key, sha256_file
from quantbench.data.dataset import CocoDataset
from quantbench.decision.uncertainty import DROP_INTERVAL_METHOD, paired_bootstrap
from quantbench.errors import ConfigError, DataError
from quantbench.evaluation.detections import NmsConfig
from quantbench.evaluation.evaluate import EvalSpec, evaluate_with_matches
from quantbench.evaluation.matches import MatchTable
from quantbench.records import BootstrapInterval

CACHE_KIND = "sensitivity"
_FORMAT_VERSION = 1  # of cached probe scores
_MATCHES_VERSION = 1  # of cached probe match tables (MatchTable.save's own format is checked on load)
_DROP_VERSION = 1  # of cached drop intervals
DROP_SEED = 0  # of the bootstrap resampling: the same resamples for every pair, so intervals are reproducible
_AGREEMENT_VERSION = 2  # of cached output agreements (2: confidence-weighted box SQNR)
_SCORE_ROW = 4  # YOLO output rows 0-3 are the box, 4.. the class scores


# ---------------------------------------------------------------------------------------------
# Output agreement with FP32 (the cheap proxies)


@dataclass(frozen=True)
class OutputAgreement:
    """How closely one graph's raw output follows the FP32 reference on the proxy images."""

    sqnr_db: float  # 10 log10(sum ref^2 / sum (out - ref)^2) over the whole raw output
    cosine: float  # mean over images of the cosine similarity of the flattened raw output
    score_sqnr_db: float  # SQNR of the class-score rows only (what NMS ranks)
    # SQNR of the box rows, each anchor weighted by its FP32 confidence (max class score): box
    # errors of anchors no detection comes from do not matter, those of confident ones decide
    # mAP at the high IoU thresholds of mAP50-95.
    box_sqnr_db: float


def _sqnr_db(signal: float, noise: float) -> float:
    if noise <= 0.0:
        return math.inf
    return 10.0 * math.log10(max(signal, 1e-30) / noise)


def error_power(sqnr_db: float) -> float:
    """Error power relative to the signal, from an SQNR in dB (0 for an exact output)."""
    return 10.0 ** (-sqnr_db / 10.0)


def sqnr_gain(after_db: float, before_db: float) -> float:
    """SQNR gained, in dB; 0 when nothing changed (both may be infinite: an exact output)."""
    return 0.0 if after_db == before_db else after_db - before_db


def output_agreement(reference: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> OutputAgreement:
    """Proxies of ``outputs`` against ``reference``: equal-shaped batches, in the same order."""
    signal = noise = score_signal = score_noise = box_signal = box_noise = 0.0
    cosines: list[float] = []
    for ref, out in zip(reference, outputs, strict=True):
        ref = ref.astype(np.float64, copy=False)
        err = out.astype(np.float64) - ref
        signal += float(np.square(ref).sum())
        noise += float(np.square(err).sum())
        if ref.ndim == 3 and ref.shape[1] > _SCORE_ROW:
            score_signal += float(np.square(ref[:, _SCORE_ROW:]).sum())
            score_noise += float(np.square(err[:, _SCORE_ROW:]).sum())
            confidence = ref[:, _SCORE_ROW:].max(axis=1)  # (batch, anchors)
            box_signal += float((np.square(ref[:, :_SCORE_ROW]).sum(axis=1) * confidence).sum())
            box_noise += float((np.square(err[:, :_SCORE_ROW]).sum(axis=1) * confidence).sum())
        flat_ref = ref.reshape(len(ref), -1)
        flat_out = out.reshape(len(out), -1).astype(np.float64)
        norms = np.linalg.norm(flat_ref, axis=1) * np.linalg.norm(flat_out, axis=1)
        cosines.extend((np.einsum("ij,ij->i", flat_ref, flat_out) / np.maximum(norms, 1e-30)).tolist())
    if score_signal == 0.0 and box_signal == 0.0:  # not a YOLO output: the whole output is both
        score_signal, score_noise = box_signal, box_noise = signal, noise
    return OutputAgreement(_sqnr_db(signal, noise), float(np.mean(cosines)), _sqnr_db(score_signal, score_noise),
                           _sqnr_db(box_signal, box_noise))


# ---------------------------------------------------------------------------------------------
# Probes: a whole-model score on held-out data, higher is better


class Probe(Protocol):
    """Scores a whole model (higher is better); the accuracy the search must keep."""

    description: str  # e.g. "mAP50-95 on calib500 (probe, 200 images)"

    def fingerprint(self) -> str:
        """Changes whenever a score could change (data, settings)."""

    def score(self, onnx_path: Path) -> float: ...


@runtime_checkable
class MatchingProbe(Probe, Protocol):
    """A probe whose score is a COCO mAP50-95: it also gives the matches the mAP was accumulated from."""

    def score_with_matches(self, onnx_path: Path) -> tuple[float, MatchTable]: ...


_DEFAULT_NMS = NmsConfig()  # the evaluation's NMS (frozen: one instance serves every probe)


class CocoProbe:
    """mAP50-95 of a model on a COCO folder subset, through ONNX Runtime and `evaluate`."""

    def __init__(self, dataset: CocoDataset, *, imgsz: int = 640, batch_size: int = 8,
                 nms: NmsConfig = _DEFAULT_NMS, threads: int | None = None):
        if len(dataset) == 0:
            raise DataError(f"probe dataset {dataset.name} has no images; give the probe at least one image.")
        self.dataset, self.imgsz, self.batch_size, self.nms = dataset, imgsz, batch_size, nms
        self.options = BuildOptions(batch_sizes=(batch_size,), threads=threads)
        self.description = f"mAP50-95 on {dataset.name} ({len(dataset)} images)"

    def fingerprint(self) -> str:
        return hash_key("coco-probe", self.dataset.fingerprint(), self.imgsz, dataclasses.asdict(self.nms))

    def score(self, onnx_path: Path) -> float:
        return self.score_with_matches(onnx_path)[0]

    def score_with_matches(self, onnx_path: Path) -> tuple[float, MatchTable]:
        """mAP50-95 and the per-image matches it was accumulated from (one evaluation)."""
        with OrtBackend().open_onnx(onnx_path, self.options) as runner:
            spec = EvalSpec(onnx_path.stem, "probe", batch_size=self.batch_size, nms=self.nms, imgsz=self.imgsz)
            result, table = evaluate_with_matches(runner, self.dataset, spec)
        return result.metrics.map50_95, table


class OutputErrorProbe:
    """Label-free probe: minus the class-score error power relative to a reference model's output.

    ``score = -sum (out - ref)^2 / sum ref^2`` over the class rows on fixed images: 0 for the
    reference itself, so a budget reads as the relative error power allowed (1e-3 = 30 dB SQNR).
    For models whose mAP means nothing (random weights from a YAML) or data without labels.
    """

    def __init__(self, images: np.ndarray, reference_onnx: Path, *, batch_size: int = 8):
        self.images, self.batch_size = images, batch_size
        self.reference_onnx = Path(reference_onnx)
        self.description = f"-relative class-score error power vs {self.reference_onnx.name} on {len(images)} images"
        self._reference: list[np.ndarray] | None = None

    def fingerprint(self) -> str:
        return hash_key("error-probe", _array_hash(self.images), sha256_file(self.reference_onnx), self.batch_size)

    def score(self, onnx_path: Path) -> float:
        if self._reference is None:
            self._reference = run_batches(self.reference_onnx, self.images, self.batch_size)
        sqnr = output_agreement(self._reference, run_batches(onnx_path, self.images, self.batch_size)).score_sqnr_db
        return -(10.0 ** (-sqnr / 10.0))


def run_batches(onnx_path: Path, images: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Raw outputs of ``onnx_path`` (ONNX Runtime) on ``images``, one array per batch.

    Derived graphs are opened once each, so float16 QuantizeLinear nodes are repaired in memory
    (`OrtBackend.open_onnx`) rather than through `OrtBackend.build`'s cached copy: same numerics.
    """
    with OrtBackend().open_onnx(onnx_path, BuildOptions(batch_sizes=(batch_size,))) as runner:
        return [np.array(runner.infer(images[i:i + batch_size]), copy=True) for i in range(0, len(images), batch_size)]


def _array_hash(array: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(str((array.shape, array.dtype.str)).encode())
    h.update(np.ascontiguousarray(array).data)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Measuring derived graphs, cached


@dataclass(frozen=True)
class _ProbedGraph:
    """A graph the probe scores: its score's cache key, and how to have it as a file."""

    key: str
    written: Callable[[], contextlib.AbstractContextManager[Path]]


def _matches_key(graph: _ProbedGraph) -> str:
    return hash_key("probe-matches", _MATCHES_VERSION, graph.key)


class GraphMeter:
    """Measures graphs derived from one Q/DQ model: output agreement and probe score, cached.

    A derived graph is named by the set of groups left INT8; its ONNX is written to a private
    scratch folder only when a measurement is not in the cache. Use as a context manager.
    """

    def __init__(self, qdq: QdqModel, cache: ArtifactCache, *, proxy_images: np.ndarray | None = None,
                 reference_onnx: Path | None = None, probe: Probe | None = None, batch_size: int = 8):
        if proxy_images is not None and reference_onnx is None:
            raise ConfigError("proxy images were given without the FP32 reference model; pass reference_onnx.")
        self.qdq, self.cache, self.probe, self.batch_size = qdq, cache, probe, batch_size
        self.proxy_images, self.reference_onnx = proxy_images, reference_onnx
        self.qdq_hash = hashlib.sha256(qdq.model.SerializeToString()).hexdigest()
        self._scratch = tempfile.TemporaryDirectory(prefix="qb-graphs-")
        self._reference: list[np.ndarray] | None = None
        self._proxy_key = (
            hash_key(_array_hash(proxy_images), sha256_file(reference_onnx), batch_size)
            if proxy_images is not None and reference_onnx is not None else None
        )
        self.measured = 0  # graphs actually run by this meter (not found in the cache)
        self._tables: dict[str, MatchTable] = {}  # by score key: loaded once per meter

    def __enter__(self) -> GraphMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._scratch.cleanup()

    @contextlib.contextmanager
    def _written(self, quantized: frozenset[str]) -> Iterator[Path]:
        """The derived graph as a scratch file, deleted after use (each is a full copy of the weights)."""
        path = Path(self._scratch.name) / f"{hash_key(sorted(quantized))}.onnx"
        onnx.save(self.qdq.materialize(quantized), str(path))
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)

    def _cached(self, key: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        def build(tmp: Path) -> dict[str, Any]:
            values = measure()
            tmp.write_text(json.dumps(values))  # the cache publishes it with its metadata sidecar
            return values

        meta = self.cache.get_or_build(CACHE_KIND, key, ".txt", build).meta
        return {k: v for k, v in meta.items() if k != "key"}

    def agreement(self, quantized: Collection[str]) -> OutputAgreement:
        """Proxies of the graph with only ``quantized`` groups INT8, against FP32."""
        if self._proxy_key is None:
            raise ConfigError("no proxy images were given to this meter; pass proxy_images and reference_onnx.")
        keep = self.qdq.check_names(quantized)
        key = hash_key("agreement", _AGREEMENT_VERSION, self.qdq_hash, sorted(keep), self._proxy_key)

        images, reference_onnx = self.proxy_images, self.reference_onnx
        assert images is not None and reference_onnx is not None  # _proxy_key is set only with both

        def measure() -> dict[str, Any]:
            if self._reference is None:
                self._reference = run_batches(reference_onnx, images, self.batch_size)
            self.measured += 1
            with self._written(keep) as path:
                outputs = run_batches(path, images, self.batch_size)
            return dataclasses.asdict(output_agreement(self._reference, outputs))

        return OutputAgreement(**self._cached(key, measure))

    def probe_score(self, quantized: Collection[str]) -> float:
        """The probe's score of the graph with only ``quantized`` groups INT8."""
        return self._score(self._derived(quantized))

    def probe_score_of_file(self, onnx_path: Path) -> float:
        """The probe's score of any ONNX (the FP32 model, a real ModelOpt build)."""
        return self._score(self._file(onnx_path))

    def probe_matches(self, quantized: Collection[str]) -> MatchTable | None:
        """The probe's match table of the graph with only ``quantized`` groups INT8; None: not a `MatchingProbe`."""
        return self._matches(self._derived(quantized))

    def probe_matches_of_file(self, onnx_path: Path) -> MatchTable | None:
        """The probe's match table of any ONNX; None when the probe is not a `MatchingProbe`."""
        return self._matches(self._file(onnx_path))

    def probe_drop(self, quantized: Collection[str], reference_onnx: Path, *, resamples: int = 1000,
                   confidence: float = 0.95) -> BootstrapInterval | None:
        """Paired-bootstrap interval of the probe mAP50-95 drop (reference - graph with only ``quantized``
        groups INT8), both on the same probe images; None when the probe is not a `MatchingProbe`."""
        return self._drop(self._derived(quantized), self._file(reference_onnx), resamples, confidence)

    def probe_drop_of_file(self, onnx_path: Path, reference_onnx: Path, *, resamples: int = 1000,
                           confidence: float = 0.95) -> BootstrapInterval | None:
        """`probe_drop` of any ONNX (a real ModelOpt build) from ``reference_onnx``."""
        return self._drop(self._file(onnx_path), self._file(reference_onnx), resamples, confidence)

    def _derived(self, quantized: Collection[str]) -> _ProbedGraph:
        keep = self.qdq.check_names(quantized)
        key = hash_key("probe", _FORMAT_VERSION, self.qdq_hash, sorted(keep), self._require_probe().fingerprint())
        return _ProbedGraph(key, lambda: self._written(keep))

    def _file(self, onnx_path: Path) -> _ProbedGraph:
        path = Path(onnx_path)
        key = hash_key("probe-file", _FORMAT_VERSION, sha256_file(path), self._require_probe().fingerprint())
        return _ProbedGraph(key, lambda: contextlib.nullcontext(path))

    def _score(self, graph: _ProbedGraph) -> float:
        probe = self._require_probe()

        def measure() -> dict[str, Any]:
            self.measured += 1
            with graph.written() as path:
                if not isinstance(probe, MatchingProbe):
                    return {"score": float(probe.score(path))}
                score, table = probe.score_with_matches(path)
            self._store_matches(graph, table)  # the same evaluation: kept for the drop's interval
            return {"score": float(score)}

        return float(self._cached(graph.key, measure)["score"])

    def _matches(self, graph: _ProbedGraph) -> MatchTable | None:
        probe = self._require_probe()
        if not isinstance(probe, MatchingProbe):
            return None
        if graph.key not in self._tables:

            def build(tmp: Path) -> None:  # a score cached before tables were kept: evaluated again
                self.measured += 1
                with graph.written() as path:
                    probe.score_with_matches(path)[1].save(tmp)

            entry = self.cache.get_or_build(CACHE_KIND, _matches_key(graph), ".npz", build)
            self._tables[graph.key] = MatchTable.load(entry.path)
        return self._tables[graph.key]

    def _store_matches(self, graph: _ProbedGraph, table: MatchTable) -> None:
        def build(tmp: Path) -> None:
            table.save(tmp)

        self.cache.get_or_build(CACHE_KIND, _matches_key(graph), ".npz", build)
        self._tables[graph.key] = table

    def _drop(self, graph: _ProbedGraph, reference: _ProbedGraph, resamples: int,
              confidence: float) -> BootstrapInterval | None:
        if not isinstance(self._require_probe(), MatchingProbe):
            return None
        key = hash_key("probe-drop", _DROP_VERSION, graph.key, reference.key, resamples, confidence, DROP_SEED,
                       DROP_INTERVAL_METHOD)

        def measure() -> dict[str, Any]:
            trial, baseline = self._matches(graph), self._matches(reference)
            assert trial is not None and baseline is not None  # a MatchingProbe always gives tables
            drop = paired_bootstrap(trial, baseline, resamples=resamples, confidence=confidence, seed=DROP_SEED)
            return dataclasses.asdict(drop.map50_95)

        return BootstrapInterval(**self._cached(key, measure))

    def _require_probe(self) -> Probe:
        if self.probe is None:
            raise ConfigError("no probe was given to this meter; pass a probe (e.g. a CocoProbe) to score models.")
        return self.probe
