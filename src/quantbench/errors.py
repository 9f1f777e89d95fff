"""The QuantbenchError family.

Every error a user can cause ends in one of these, with one sentence that names the file or
value, what was allowed, and the fix. Library code never turns them into tracebacks deep inside
ONNX, ModelOpt or TensorRT: it catches at the boundary and re-raises with context.
"""

from __future__ import annotations


class QuantbenchError(Exception):
    """Base class: the message is meant for the user, as is."""


class InputFileError(QuantbenchError):
    """A user-supplied file is missing, unreadable or malformed."""


class ModelError(InputFileError):
    """A model file is missing, not ONNX, or not a YOLO detector of the expected layout."""


class DataError(InputFileError):
    """An image folder or annotation file is missing, empty or malformed."""


class ConfigError(QuantbenchError):
    """A configuration table (variants.toml, thresholds.toml, CLI option) has a bad key or value."""


class OutputError(QuantbenchError):
    """A place where results are to be written (a report folder, a --json file) cannot be written."""


class QuantizeError(QuantbenchError):
    """ModelOpt failed to produce a variant."""


class BackendError(QuantbenchError):
    """An inference backend failed to build, load or run a model."""


class BackendUnavailable(BackendError):
    """A backend's runtime (TensorRT, a CUDA device) is not present on this machine."""


class DownloadError(QuantbenchError):
    """A download failed, was truncated, or did not match its checksum."""
