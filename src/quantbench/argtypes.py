"""Command-line value parsers shared by `quantbench`'s CLI, the bench suite's pytest options and the analysis;
and their counterparts for values already parsed (`is_count`, `check_counts` for dataclass fields).

Each is an argparse ``type=``: it returns the parsed value or raises ``ArgumentTypeError`` with the
reason, so a bad value stops the program before any work, with argparse's (or pytest's) usage line.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from quantbench.backends import BACKEND_CHOICES
from quantbench.errors import ConfigError

MODEL_SUFFIXES = (".onnx", ".pt", ".yaml", ".yml")


def whole_number(text: str, minimum: int) -> int:
    """An int of at least ``minimum``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{text!r} must be {'at least 1' if minimum == 1 else f'{minimum} or more'}")
    return value


def is_count(value: object, minimum: int = 1) -> bool:
    """True for an int (not a bool) of at least ``minimum``: `whole_number`'s check for values already
    parsed (dataclass fields, keyword arguments), which raise their own error naming the field."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_counts(config: object, minimums: dict[str, int]) -> None:
    """Refuse a dataclass whose named fields are not whole numbers of at least their minimum.

    For ``__post_init__``: the `ConfigError` names the field, the value and, as the example, the
    field's default.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(config)}  # type: ignore[arg-type]
    for name, minimum in minimums.items():
        value = getattr(config, name)
        if not is_count(value, minimum):
            kind = "a positive" if minimum >= 1 else "a non-negative"
            raise ConfigError(f"{name}={value!r} is not {kind} whole number; pass e.g. {defaults[name]}.")


def positive_int(text: str) -> int:
    """Counts of 1 or more."""
    return whole_number(text, 1)


def non_negative_int(text: str) -> int:
    """Counts of 0 or more."""
    return whole_number(text, 0)


def fraction(text: str) -> float:
    """A number from 0 to 1 (a share, a confidence level)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 0 to 1")
    return value


def seconds(text: str) -> float:
    """A finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
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


def backend_name(text: str) -> str:
    if text not in BACKEND_CHOICES:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(BACKEND_CHOICES)}")
    return text


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


def latency_check(text: str):
    """``compare --fail-latency`` checks (pytest-benchmark's syntax, `compare.parse_latency_check`)."""
    from quantbench.outputs.compare import parse_latency_check  # pytest_benchmark is imported only when compare is used

    return parse_latency_check(text)
