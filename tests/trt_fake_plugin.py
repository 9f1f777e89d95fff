"""pytest plugin: run the bench on the FAKE TensorRT (``-p trt_fake_plugin``, with ``tests/`` on PYTHONPATH).

Imported when pytest registers it, before the bench creates its state, it puts the fake ``tensorrt``
of ``QB_FAKE_TENSORRT_VERSION`` (default 10.16.1.11, one of ``tests/data/trt_surface_*.json``) into
``sys.modules`` and, on a machine without a usable CUDA device, the CPU stand-in for the CUDA
runtime, and hides the fake from ModelOpt (see ``_without_tensorrt``). ``--qb-backend tensorrt``
then drives the real TensorRT backend code end to end; the
engines run the ONNX with ONNX Runtime and every record, report line and selection says SIMULATED.
For tests only: nothing it measures is a TensorRT figure.
"""

from __future__ import annotations

import os
import sys

import cuda_standin
import trt_fake

from quantbench.backends import cuda

VERSION = os.environ.get("QB_FAKE_TENSORRT_VERSION", "10.16.1.11")

sys.modules["tensorrt"] = trt_fake.fake_tensorrt(VERSION)
if cuda.device_unavailable_reason() is not None:
    cuda_standin.install()


def _without_tensorrt(quantize_variant):
    """ModelOpt imports ``tensorrt`` when it can and drives it further than quantbench's backend does
    (``init_libnvinfer_plugins``, ...); it quantizes on ONNX Runtime without it. It does not see the fake."""
    import functools

    @functools.wraps(quantize_variant)
    def call(*args, **kwargs):
        fake = sys.modules.get("tensorrt")
        sys.modules["tensorrt"] = None  # `import tensorrt` raises ImportError inside ModelOpt
        try:
            return quantize_variant(*args, **kwargs)
        finally:
            sys.modules["tensorrt"] = fake

    return call


import quantbench.build.quantize  # noqa: E402 - after the fake, so nothing imported it yet

quantbench.build.quantize.quantize_variant = _without_tensorrt(quantbench.build.quantize.quantize_variant)
