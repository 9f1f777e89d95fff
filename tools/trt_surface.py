"""Write the API surface of NVIDIA's real TensorRT Python bindings as JSON, for any version.

NVIDIA publishes the bindings as binary wheels on PyPI (``tensorrt-cu12-bindings`` for 10.x,
``tensorrt-cu13-bindings`` for 11.x). Their ``tensorrt_bindings/tensorrt.so`` links against
libnvinfer, libnvonnxparser and libnvinfer_plugin, which are not on PyPI, but imports only a few
plain C factory symbols from them. This script, per version:

1. downloads the wheel (``pip download --no-deps``) into ``--wheels`` unless it is already there;
2. unpacks it into a temporary folder and reads, with binutils, which libraries ``tensorrt.so``
   NEEDs (``readelf -d``) and which C symbols it imports (``nm -D --undefined-only``);
3. builds one stub library per NEEDED TensorRT library with gcc (every symbol returns 0/NULL, so
   nothing native can run: the builder and runtime factories would return NULL);
4. imports the bindings in a child process with the stubs on ``LD_LIBRARY_PATH`` and writes every
   class (members: method signatures as pybind11 prints them, properties and whether they are
   read-only), every enum (members, their ``str()``, whether ``.name`` is a method) and the
   module's functions, plus what ``tensorrt.nptype`` answers for each ``DataType``.

Usage (needs pip, gcc and binutils; nothing is installed into any environment)::

    python tools/trt_surface.py 10.0.1 10.16.1.11 11.4.0.106 --wheels /tmp/trt-wheels --out tests/data

Output: ``<out>/trt_surface_<version>.json``. The tests (``tests/trt_fake.py``) build the fake at the
TensorRT boundary from these files.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64")
PYTHON_VERSION = "3.11"
# Libraries of the TensorRT SDK that the bindings NEED and that are stubbed (others are system ones).
TRT_LIBRARY = re.compile(r"^lib(nvinfer|nvonnxparser|nvinfer_plugin)\.so\.\d+$")
# The only members kept from an object's dunder names: what a caller of the API uses.
# Classes left out of the committed surfaces (--full keeps them): network layers, plugins and INT8
# calibrators, which quantbench never touches (it parses ONNX and builds strongly typed networks).
LEFT_OUT_CLASSES = re.compile(r"Layer$|Plugin|Calibrator|^IDimensionExpr$|^IExprBuilder$|^DimsExprs$|^ILoop$|^IIfConditional$")
KEPT_DUNDERS = ("__init__", "__len__", "__getitem__", "__setitem__", "__iter__", "__bool__", "__int__", "__buffer__")


def package_for(version: str) -> str:
    """10.x bindings are built for CUDA 12 (``-cu12-``), 11.x for CUDA 13 (``-cu13-``)."""
    major = int(version.split(".")[0])
    return f"tensorrt-cu{12 if major == 10 else 13}-bindings=={version}"


def download_wheel(version: str, wheels: Path) -> Path:
    name = package_for(version).split("==")[0].replace("-", "_")
    pattern = f"{name}-{version}-*.whl"
    found = sorted(wheels.glob(pattern))
    if not found:
        platform_args = [arg for p in PLATFORMS for arg in ("--platform", p)]
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        "--python-version", PYTHON_VERSION, *platform_args, "-d", str(wheels), package_for(version)],
                       check=True)
        found = sorted(wheels.glob(pattern))
    if not found:
        raise SystemExit(f"pip downloaded no wheel matching {pattern} into {wheels}")
    return found[0]


def imported_c_symbols(library: Path) -> list[str]:
    """Plain C symbols the library needs from others (strong, unversioned, not Python's or C++'s)."""
    out = subprocess.run(["nm", "-D", "--undefined-only", str(library)], check=True, capture_output=True, text=True).stdout
    symbols = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "U" and "@" not in parts[1] and not parts[1].startswith(("Py", "_Py", "_Z", "_")):
            symbols.append(parts[1])
    return sorted(symbols)


def needed_libraries(library: Path) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(library)], check=True, capture_output=True, text=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", out)


def system_symbols(sonames: list[str]) -> set[str]:
    """Symbols the system libraries among ``sonames`` define (libc's dlopen, ...): those are not stubbed."""
    cache = subprocess.run(["ldconfig", "-p"], check=True, capture_output=True, text=True).stdout
    paths = dict(re.findall(r"^\s*(\S+) \(.*x86-64.*\) => (\S+)$", cache, re.MULTILINE))
    defined: set[str] = set()
    for soname in sonames:
        if soname in paths:
            out = subprocess.run(["nm", "-D", "--defined-only", paths[soname]], check=True, capture_output=True,
                                 text=True).stdout
            defined |= {line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()}
    return defined


def build_stubs(symbols: list[str], libraries: list[str], folder: Path) -> None:
    """One C file defining every imported symbol as a function returning 0, built once per soname."""
    source = folder / "trt_stub.c"
    source.write_text("".join(f"long {symbol}(void) {{ return 0; }}\n" for symbol in symbols))
    for soname in libraries:
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(folder / soname), f"-Wl,-soname,{soname}", str(source)],
                       check=True)


def trimmed(surface: dict) -> dict:
    """The surface without the classes (and their nested enums) quantbench never touches."""
    left_out = {name for name in surface["classes"] if LEFT_OUT_CLASSES.search(name)}
    return {**surface,
            "classes": {k: v for k, v in surface["classes"].items() if k not in left_out},
            "enums": {k: v for k, v in surface["enums"].items() if k.split(".")[0] not in left_out},
            "left_out_classes": sorted(left_out)}


def surface_of(version: str, wheel: Path, out: Path, *, full: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"trt-surface-{version}-") as tmp:
        root = Path(tmp)
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(root / "site")
        library = next((root / "site" / "tensorrt_bindings").glob("tensorrt*.so"))
        stubs = root / "stubs"
        stubs.mkdir()
        needed = needed_libraries(library)
        libraries = [lib for lib in needed if TRT_LIBRARY.match(lib)]
        system = system_symbols([lib for lib in needed if lib not in libraries])
        symbols = [symbol for symbol in imported_c_symbols(library) if symbol not in system]
        build_stubs(symbols, libraries, stubs)
        env = {**os.environ, "PYTHONPATH": str(root / "site"), "LD_LIBRARY_PATH": str(stubs)}
        dumped = root / "surface.json"
        subprocess.run([sys.executable, __file__, "--dump", str(dumped)], check=True, env=env, cwd=root)
        surface = json.loads(dumped.read_text())
    if surface["version"] != version:
        raise SystemExit(f"{wheel.name} reports version {surface['version']}, not {version}")
    if not full:
        surface = trimmed(surface)
    surface["source"] = {
        "package": package_for(version), "wheel": wheel.name, "platform_tags": list(PLATFORMS),
        "stubbed_libraries": libraries, "stubbed_symbols": symbols,
        "generated_by": "tools/trt_surface.py (import with stub libraries; no TensorRT native code ran)",
    }
    path = out / f"trt_surface_{version}.json"
    path.write_text(json.dumps(surface, indent=1, sort_keys=True) + "\n")
    return surface


# --- the child process: introspect the imported bindings --------------------------------------------


def _signatures(function: object) -> list[str]:
    """pybind11 writes each overload's signature into the docstring (``name(a: T, ...) -> R``)."""
    doc = getattr(function, "__doc__", None) or ""
    lines = [line.strip() for line in doc.splitlines()]
    if lines and lines[0].endswith("(*args, **kwargs)") and "Overloaded function." in lines[:3]:
        return [re.sub(r"^\d+\. ", "", line) for line in lines if re.match(r"^\d+\. \w+\(", line)]
    if lines and re.match(r"^\w*\(.*\)( -> .+)?$", lines[0]):  # a property's getter has no name
        return [lines[0]]
    try:  # a Python function (nptype, volume, ...)
        return [f"{getattr(function, '__name__', '?')}{inspect.signature(function)}"]
    except (TypeError, ValueError):
        return []


def _is_enum(cls: type) -> bool:
    return isinstance(getattr(cls, "__members__", None), dict)


def _enum(cls: type) -> dict:
    members = cls.__members__
    name_attr = inspect.getattr_static(cls, "name", None)
    return {
        "members": {name: int(value) for name, value in members.items()},
        "str": {name: str(value) for name, value in members.items()},
        "name_is_method": not isinstance(name_attr, property),
    }


def _defines_constructor(cls: type) -> bool:
    """pybind11 classes without ``py::init`` only have the slot wrapper that raises "No constructor defined!"."""
    slot_wrapper = type(object.__init__)
    return any(not isinstance(vars(k).get("__init__", object.__init__), slot_wrapper)
               for k in cls.__mro__ if k is not object)


def _members(cls: type) -> dict:
    members = {}
    for name in dir(cls):
        if name.startswith("__") and name not in KEPT_DUNDERS:
            continue
        if name.startswith("_") and not name.startswith("__"):
            continue
        raw = inspect.getattr_static(cls, name)
        if name == "__init__" and not _defines_constructor(cls):
            continue  # pybind11's base __init__ raises "No constructor defined!"
        if isinstance(raw, property):
            members[name] = {"kind": "property", "readonly": raw.fset is None,
                             "type": (_signatures(raw.fget) or ["?"])[0].split(" -> ")[-1] if raw.fget else "?"}
        elif isinstance(raw, type) and _is_enum(raw):
            members[name] = {"kind": "enum", "enum": f"{cls.__name__}.{name}"}
        elif isinstance(raw, (staticmethod, classmethod)):
            members[name] = {"kind": "staticmethod", "signatures": _signatures(getattr(cls, name))}
        elif callable(raw):
            members[name] = {"kind": "method", "signatures": _signatures(raw)}
        else:
            members[name] = {"kind": "value", "type": type(raw).__name__, "repr": repr(raw)[:80]}
    return members


def dump(path: Path) -> None:
    import tensorrt_bindings as trt

    classes, enums, functions, values = {}, {}, {}, {}
    for name, value in sorted(vars(trt).items()):
        if name.startswith("_") or inspect.ismodule(value):
            continue
        if isinstance(value, type) and _is_enum(value):
            enums[name] = _enum(value)
        elif isinstance(value, type):
            classes[name] = {"bases": [b.__name__ for b in value.__bases__ if b is not object and "pybind11" not in b.__name__],
                             "members": _members(value)}
            for member, raw in vars(value).items():
                if isinstance(raw, type) and _is_enum(raw):
                    enums[f"{name}.{member}"] = _enum(raw)
        elif callable(value):
            functions[name] = {"signatures": _signatures(value)}
        elif _is_enum(type(value)):
            values[name] = f"{type(value).__name__}.{value.name if isinstance(value.name, str) else value.name()}"
    nptype = {}
    for member, value in trt.DataType.__members__.items():
        try:
            nptype[member] = trt.nptype(value).__name__
        except TypeError as exc:
            nptype[member] = f"TypeError: {exc}"
    surface = {"version": trt.__version__, "classes": classes, "enums": enums, "functions": functions,
               "values": values, "nptype": nptype}
    path.write_text(json.dumps(surface))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("versions", nargs="*", help="bindings versions, e.g. 10.0.1 10.16.1.11 11.4.0.106")
    parser.add_argument("--wheels", type=Path, default=Path(tempfile.gettempdir()) / "trt-wheels",
                        help="where wheels are downloaded (outside the repository: never commit them)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests" / "data")
    parser.add_argument("--full", action="store_true", help="keep layer, plugin and calibrator classes too")
    parser.add_argument("--dump", type=Path, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    if args.dump:
        dump(args.dump)
        return
    if not args.versions:
        parser.error("name at least one version")
    args.wheels.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    for version in args.versions:
        surface = surface_of(version, download_wheel(version, args.wheels), args.out, full=args.full)
        size = (args.out / f"trt_surface_{version}.json").stat().st_size
        print(f"{version}: {len(surface['classes'])} classes, {len(surface['enums'])} enums, "
              f"{len(surface['functions'])} functions -> {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
