"""FAKE onnxruntime-gpu: ONNX Runtime's CUDA provider faked at the ONNX Runtime boundary, for a CPU machine.

`FakeCudaOrt` stands for the ``onnxruntime`` module the onnxruntime-cuda backend uses (through
``quantbench.backends.ort._ort``). It is made of the real onnxruntime: ``SessionOptions``,
``RunOptions``, ``GraphOptimizationLevel`` and ``__version__`` are the real ones, and every session
is a real CPU ``InferenceSession``. What is faked is the CUDA provider only:

- ``get_available_providers()`` lists CUDAExecutionProvider (or not: ``cuda_build=False``);
- `FakeCudaSession` checks the provider options as ONNX Runtime's CUDA provider does (known keys,
  string values, a ``user_compute_stream`` that is a live stream of the CUDA stand-in), reports the
  CUDA provider first (or the CPU only: ``cuda_loads=False``, ONNX Runtime's silent fallback when
  the CUDA libraries do not load), and returns ``get_provider_options()`` as ONNX Runtime does
  (every option, as strings);
- `FakeCudaIOBinding` has the real ``IOBinding``'s method signatures (tests compare them) and
  records "cuda" bindings; ``run_with_iobinding`` binds the same addresses to a real CPU
  ``IOBinding`` (the CUDA stand-in's device memory is host memory) and runs the real session, so the
  output is the CPU provider's, written where the runner bound it;
- with ``enable_cuda_graph``, one graph per ``gpu_graph_id``: captured after one regular run, then
  replayed; a replay whose bound addresses or shapes differ from the capture's is refused, because
  ONNX Runtime would replay into the captured addresses (stale inputs, outputs written elsewhere).

Nothing here is CUDA: ``SIMULATED`` says so, and figures measured through it are marked simulated.
"""

from __future__ import annotations

import types
from collections import Counter
from typing import Any

import numpy as np

SIMULATED = "onnxruntime-gpu fake (tests/ort_cuda_fake.py): the CUDA provider is a CPU session"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# Some of the CUDA provider's options with ONNX Runtime's defaults, as get_provider_options() returns them.
CUDA_DEFAULTS = {
    "device_id": "0", "has_user_compute_stream": "0", "user_compute_stream": "0", "gpu_mem_limit": "18446744073709551615",
    "arena_extend_strategy": "kNextPowerOfTwo", "cudnn_conv_algo_search": "EXHAUSTIVE", "do_copy_in_default_stream": "1",
    "enable_cuda_graph": "0", "cudnn_conv_use_max_workspace": "1", "use_tf32": "1", "prefer_nhwc": "0",
}
MIN_RUNS_BEFORE_CAPTURE = 1  # ONNX Runtime's CUDA provider: one regular run (allocations), then capture


class FakeError(RuntimeError):
    """What ONNX Runtime raises (its Fail/InvalidArgument exceptions are RuntimeError subclasses)."""


class FakeCudaIOBinding:
    """Records bindings like ``onnxruntime.IOBinding``; run_with_iobinding replays them on a real CPU binding."""

    def __init__(self, session: FakeCudaSession):
        self._session = session
        self.inputs: dict[str, tuple] = {}
        self.outputs: dict[str, tuple] = {}

    def bind_input(self, name, device_type, device_id, element_type, shape, buffer_ptr):
        self._session._check_device(device_type, device_id)
        self.inputs[name] = (np.dtype(element_type), tuple(int(d) for d in shape), int(buffer_ptr))

    def bind_output(self, name, device_type="cpu", device_id=0, element_type=None, shape=None, buffer_ptr=None):
        self._session._check_device(device_type, device_id)
        if element_type is None or shape is None or buffer_ptr is None:
            raise FakeError("the fake binds preallocated outputs only (element_type, shape and buffer_ptr)")
        self.outputs[name] = (np.dtype(element_type), tuple(int(d) for d in shape), int(buffer_ptr))

    def clear_binding_inputs(self):
        self.inputs.clear()

    def clear_binding_outputs(self):
        self.outputs.clear()


class FakeCudaSession:
    """A real CPU InferenceSession that answers as one on ONNX Runtime's CUDA provider."""

    def __init__(self, fake: FakeCudaOrt, path_or_bytes: Any, sess_options: Any = None, providers: Any = None,
                 provider_options: Any = None, **kwargs: Any):
        self._fake = fake
        names = [p[0] if isinstance(p, tuple) else p for p in providers or [CPU]]
        requested = next((dict(p[1]) for p in providers or [] if isinstance(p, tuple) and p[0] == CUDA), {})
        self.cuda = CUDA in names
        self.cuda_options = dict(CUDA_DEFAULTS)
        if self.cuda:
            if not fake.cuda_build:
                raise FakeError(f"{CUDA} is not in available provider names")
            self.cuda_options = self._parse(requested)
        self.session = fake.real.InferenceSession(path_or_bytes, sess_options=sess_options, providers=[CPU])
        self.graph_runs: Counter[str] = Counter()  # regular runs per graph id before its capture
        self.captured: dict[str, tuple] = {}  # graph id -> the bindings it was captured with
        self.replays: Counter[str] = Counter()
        fake.sessions.append(self)

    def _parse(self, requested: dict[str, Any]) -> dict[str, str]:
        unknown = set(requested) - set(CUDA_DEFAULTS)
        if unknown:
            raise FakeError(f"Unknown provider option: {sorted(unknown)[0]}")
        if any(not isinstance(v, str) for v in requested.values()):
            raise FakeError("provider option values must be strings")
        options = {**CUDA_DEFAULTS, **requested}
        stream = int(options["user_compute_stream"])
        if stream:
            if stream not in self._fake.runtime.streams:
                raise FakeError(f"user_compute_stream {stream} is not a live CUDA stream")
            options["has_user_compute_stream"] = "1"
        return options

    def _check_device(self, device_type: str, device_id: int) -> None:
        if device_type != "cuda" or int(device_id) != int(self.cuda_options["device_id"]):
            raise FakeError(f"the fake binds device cuda:{self.cuda_options['device_id']} only, got {device_type}:{device_id}")

    # -- the real session's answers, the CUDA provider first ------------------------------------------
    def get_providers(self) -> list[str]:
        return [CUDA, CPU] if self.cuda and self._fake.cuda_loads else [CPU]

    def get_provider_options(self) -> dict[str, dict[str, str]]:
        options = {CPU: {}}
        if self.cuda and self._fake.cuda_loads:
            options = {CUDA: dict(self.cuda_options), **options}
        return options

    def get_inputs(self):
        return self.session.get_inputs()

    def get_outputs(self):
        return self.session.get_outputs()

    def run(self, output_names, input_feed, run_options=None):
        return self.session.run(output_names, input_feed, run_options)

    def io_binding(self):
        return FakeCudaIOBinding(self)

    def run_with_iobinding(self, iobinding, run_options=None):
        if not iobinding.inputs or not iobinding.outputs:
            raise FakeError("bind every input and output before run_with_iobinding")
        stream = int(self.cuda_options["user_compute_stream"])
        if stream and stream not in self._fake.runtime.streams:
            raise FakeError("the session's compute stream was destroyed before the session")
        bound = (tuple(sorted(iobinding.inputs.items())), tuple(sorted(iobinding.outputs.items())))
        if self.cuda_options["enable_cuda_graph"] == "1":
            graph = _run_config(run_options, "gpu_graph_id") or "0"
            if graph in self.captured:
                if self.captured[graph] != bound:
                    raise FakeError(f"CUDA graph {graph} was captured with other addresses or shapes: "
                                    "its replay would read and write those")
                self.replays[graph] += 1
            elif self.graph_runs[graph] >= MIN_RUNS_BEFORE_CAPTURE:
                self.captured[graph] = bound
            else:
                self.graph_runs[graph] += 1
        self.runs_on_cpu(iobinding)

    def runs_on_cpu(self, iobinding: FakeCudaIOBinding) -> None:
        """The bound "device" addresses (host memory under the CUDA stand-in) on a real CPU binding."""
        real = self.session.io_binding()
        for name, (dtype, shape, ptr) in iobinding.inputs.items():
            real.bind_input(name, "cpu", 0, dtype.type, list(shape), ptr)
        for name, (dtype, shape, ptr) in iobinding.outputs.items():
            real.bind_output(name, "cpu", 0, dtype.type, list(shape), ptr)
        self.session.run_with_iobinding(real)


def _run_config(run_options: Any, key: str) -> str | None:
    if run_options is None:
        return None
    try:
        return run_options.get_run_config_entry(key)
    except RuntimeError:  # ONNX Runtime: "RunOptions does not have configuration with key"
        return None


class FakeCudaOrt(types.SimpleNamespace):
    """The ``onnxruntime`` module as the onnxruntime-cuda backend sees it, the CUDA provider faked."""

    SIMULATED = SIMULATED

    def __init__(self, runtime: Any, *, cuda_build: bool = True, cuda_loads: bool = True):
        import onnxruntime

        super().__init__()
        self.real, self.runtime = onnxruntime, runtime
        self.cuda_build, self.cuda_loads = cuda_build, cuda_loads
        self.__version__ = onnxruntime.__version__
        self.SessionOptions, self.RunOptions = onnxruntime.SessionOptions, onnxruntime.RunOptions
        self.GraphOptimizationLevel = onnxruntime.GraphOptimizationLevel
        self.sessions: list[FakeCudaSession] = []
        self.preloaded = 0

    def preload_dlls(self, cuda: bool = True, cudnn: bool = True, msvc: bool = True, directory: Any = None) -> None:
        self.preloaded += 1  # the real one loads CUDA/cuDNN from the nvidia-* packages; nothing to load here

    def get_available_providers(self) -> list[str]:
        return [CUDA, CPU] if self.cuda_build else [CPU]

    def InferenceSession(self, *args: Any, **kwargs: Any) -> FakeCudaSession:  # onnxruntime's name
        return FakeCudaSession(self, *args, **kwargs)


def install(monkeypatch: Any, *, cuda_build: bool = True, cuda_loads: bool = True, standin: bool = True) -> FakeCudaOrt:
    """Make quantbench's ONNX Runtime backends see the fake (and, by default, the CPU stand-in for CUDA)."""
    import cuda_standin

    from quantbench.backends import ort

    runtime = cuda_standin.install(monkeypatch) if standin else None
    fake = FakeCudaOrt(runtime, cuda_build=cuda_build, cuda_loads=cuda_loads)
    monkeypatch.setattr(ort, "_ort", lambda: fake)
    return fake
