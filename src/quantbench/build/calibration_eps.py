"""Which ONNX Runtime execution provider ModelOpt calibrates on: the fastest one that really opens.

INT8 calibration is almost all of a cold bench's ModelOpt time (issue 21: 21 of 22 minutes on
yolo11n-coco), and it is ONNX Runtime inference over the calibration images: on a GPU machine it
belongs on the GPU. ``auto`` walks ONNX Runtime's own list (`onnxruntime.get_available_providers`)
from the fastest (TensorRT EP, then CUDA EP) down to the CPU and takes the first that opens a
session on a one-node model. A GPU EP that ONNX Runtime lists but cannot open (no GPU, a CUDA 12
build beside CUDA 13 libraries, Ultralytics' cuDNN clash) costs one warning line naming the cause
and the CPU calibrates instead; it never fails the build.

The EP is part of every INT8 build's cache key and record (``options["calibration"]["eps"]``):
GPU kernels accumulate in another order than the CPU's, so ranges (hence scales) may differ in the
last bits, and a build must say what produced it.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
from dataclasses import dataclass
from pathlib import Path

from quantbench.errors import ConfigError

log = logging.getLogger(__name__)

# ModelOpt's names (its `calibration_eps`) for ONNX Runtime's providers, fastest first.
MODELOPT_EPS = {
    "TensorrtExecutionProvider": "trt",
    "CUDAExecutionProvider": "cuda:0",
    "CPUExecutionProvider": "cpu",
}
CHOICES = ("auto", "trt", "cuda", "cpu")
# The shared library ONNX Runtime loads for each GPU provider: loading it ourselves names what is missing.
_PROVIDER_LIBRARY = {
    "TensorrtExecutionProvider": "libonnxruntime_providers_tensorrt.so",
    "CUDAExecutionProvider": "libonnxruntime_providers_cuda.so",
}


@dataclass(frozen=True)
class CalibrationEps:
    """The EP list handed to ModelOpt and, when a faster one was refused, why (one line)."""

    eps: tuple[str, ...]  # ModelOpt names, e.g. ("cuda:0",) or ("cpu",)
    requested: str  # auto, trt, cuda or cpu
    fallback: str | None = None

    @property
    def label(self) -> str:
        return ",".join(self.eps)


def parse_choice(text: str) -> str:
    """An argparse ``type=``: one of `CHOICES`."""
    import argparse

    if text not in CHOICES:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(CHOICES)}")
    return text


def check_choice(value: str) -> str:
    if value not in CHOICES:
        raise ConfigError(f"calibration EP {value!r} is not one of {', '.join(CHOICES)}; pick one of them "
                          "(auto: the fastest one ONNX Runtime can open here).")
    return value


def _probe_model() -> bytes:
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["x"], ["y"], name="probe")
    graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _why_not(provider: str) -> str | None:
    """None when ONNX Runtime opens a session on ``provider``; else the cause, as one short phrase."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # the cause is reported once, in our warning, not in ORT's red lines
    ort.set_default_logger_severity(4)  # provider-library load errors go to the default logger
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # ORT prints "EP Error ... Falling back" itself
            session = ort.InferenceSession(_probe_model(), options, providers=[provider])
    except Exception as exc:  # ORT raises its own Fail/RuntimeError types for a provider it cannot create
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    finally:
        ort.set_default_logger_severity(2)  # ORT's default (warnings)
    if provider in session.get_providers():
        return None
    # ORT fell back to the CPU silently (its reason went to its own log): load the provider library
    # ourselves so the warning can name the missing dependency.
    library = Path(ort.__file__).parent / "capi" / _PROVIDER_LIBRARY.get(provider, "")
    try:
        ctypes.CDLL(str(library))
    except OSError as exc:
        return str(exc).strip().splitlines()[0]
    return "ONNX Runtime opened the session on the CPU instead (no usable GPU or driver)"


def choose_calibration_eps(requested: str = "auto") -> CalibrationEps:
    """The EP ModelOpt calibrates on: ``requested`` (auto, trt, cuda, cpu) where it opens, else the CPU."""
    import onnxruntime as ort

    check_choice(requested)
    if requested == "cpu":
        return CalibrationEps(("cpu",), requested)
    offered = ort.get_available_providers()
    wanted = {"auto": ("TensorrtExecutionProvider", "CUDAExecutionProvider"),
              "trt": ("TensorrtExecutionProvider",), "cuda": ("CUDAExecutionProvider",)}[requested]
    refused: list[str] = []
    for provider in wanted:
        if provider not in offered:
            if requested != "auto":
                refused.append(f"{provider} is not in this ONNX Runtime build ({ort.__version__}: "
                               f"{', '.join(offered)})")
            continue
        cause = _why_not(provider)
        if cause is None:
            return CalibrationEps((MODELOPT_EPS[provider],), requested)
        refused.append(f"{provider} does not open ({cause})")
    if not refused:  # auto on a CPU-only ONNX Runtime: nothing was refused
        return CalibrationEps(("cpu",), requested)
    reason = "; ".join(refused)
    log.warning("quantbench: calibrating on the CPU: %s", reason)
    return CalibrationEps(("cpu",), requested, fallback=reason)
