"""Command-line value parsers shared by `quantbench`'s CLI, the bench suite's pytest options and the analysis.

Each is an argparse ``type=``: it returns the parsed value or raises ``ArgumentTypeError`` with the
reason, so a bad value stops the program before any work, with argparse's (or pytest's) usage line.
The checks themselves are `quantbench.rules`' (shared with values that arrive already parsed); the
backend and latency-check parsers live beside what they parse (`backends.backend_name`,
`outputs.compare.latency_check`).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from quantbench.rules import is_count

MODEL_SUFFIXES = (".onnx", ".pt", ".yaml", ".yml")


def whole_number(text: str, minimum: int) -> int:
    """An int of at least ``minimum``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not is_count(value, minimum):
        raise argparse.ArgumentTypeError(f"{text!r} must be {'at least 1' if minimum == 1 else f'{minimum} or more'}")
    return value


def _number(text: str) -> float:
    """``text`` as a float; NaN (which every range check refuses) when it is not a number."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def positive_int(text: str) -> int:
    """Counts of 1 or more."""
    return whole_number(text, 1)


def non_negative_int(text: str) -> int:
    """Counts of 0 or more."""
    return whole_number(text, 0)


def fraction(text: str) -> float:
    """A number from 0 to 1 (a share, a confidence level)."""
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 0 to 1")
    return value


def seconds(text: str) -> float:
    """A finite number of seconds >= 0."""
    value = _number(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0; pass e.g. 5 (0: rounds only)")
    return value


def model_source(text: str) -> str:
    """A model file (.onnx/.pt/.yaml) that exists, or a bare Ultralytics name like yolo11n.pt."""
    path = Path(text).expanduser()
    if path.suffix.lower() not in MODEL_SUFFIXES:
        raise argparse.ArgumentTypeError(f"{text!r} is not a .onnx, .pt or .yaml model; pass one of those")
    if path.exists():
        return str(path.resolve())
    bare_name = path.parent == Path(".") and path.suffix.lower() != ".onnx"
    if not bare_name:
        raise argparse.ArgumentTypeError(f"model file {text!r} does not exist; check the path")
    return text  # resolved by Ultralytics (yolo11n.pt downloads, yolo11n.yaml is packaged)


def existing_dir(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"folder {text!r} does not exist; pass a COCO folder (images/ + instances.json)")
    return path.resolve()


def existing_file(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"file {text!r} does not exist; check the path")
    return path.resolve()


def output_dir(text: str) -> Path:
    """A folder to write into: it may not exist yet, but must not be a file."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a folder; pass a folder path")
    return path.resolve()


def name_patterns(text: str) -> tuple[str, ...]:
    """``int8-max,int8-entropy*`` -> names or shell-style globs, matched against the variant table later."""
    patterns = tuple(part.strip() for part in text.split(",") if part.strip())
    if not patterns:
        raise argparse.ArgumentTypeError(f"{text!r} names no variant; pass names or globs like fp16,int8-*")
    return patterns


def batch_sizes(text: str) -> tuple[int, ...]:
    """``1,8`` -> (1, 8); the first is the reference batch size of the selection."""
    sizes = tuple(positive_int(part.strip()) for part in text.split(",") if part.strip())
    if not sizes:
        raise argparse.ArgumentTypeError(f"{text!r} names no batch size; pass e.g. 1 or 1,8")
    if len(set(sizes)) != len(sizes):
        raise argparse.ArgumentTypeError(f"{text!r} repeats a batch size; list each once")
    return sizes
