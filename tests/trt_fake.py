"""FAKE at the TensorRT boundary, generated from the API surface of NVIDIA's real Python bindings.

TensorRT's native libraries cannot be installed where quantbench is developed, but its Python
bindings can be introspected (``tools/trt_surface.py`` writes ``tests/data/trt_surface_<version>.json``).
:func:`fake_tensorrt` turns one such surface into a ``tensorrt`` module whose every class, enum and
function carries exactly the members of that version and refuses what the real pybind11 binding
refuses:

- an unknown member (``AttributeError``, as pybind11 objects have no ``__dict__``);
- a call whose arguments match none of the member's pybind11 overloads: wrong count, unknown or
  positional-only keyword names, wrong types (``TypeError: incompatible function arguments``);
- writing a read-only property, or a property with a value of the wrong type;
- a constructor that the binding does not define.

Behind that checked surface a small simulation stands in for TensorRT itself: the "parser" reads
the ONNX with ``onnx``, the "builder" writes a plan that names the ONNX (and its sha256), the
"engine" runs that ONNX through ONNX Runtime's CPU provider, enqueued on the caller's CUDA stream
through whichever CUDA runtime ``quantbench.backends.cuda.cudart()`` answers (the real one on a GPU,
``tests/cuda_standin.py`` on a CPU), and the "inspector" describes the ONNX nodes in TensorRT's
engine-information JSON. Nothing here is TensorRT: every module carries ``__quantbench_simulated__``
and quantbench marks every figure it produces as simulated.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import re
import threading
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).parent / "data"
SURFACE_VERSIONS = ("10.0.1", "10.1.0", "10.8.0.43", "10.16.1.11", "11.4.0.106")
PREFIX = "tensorrt_bindings.tensorrt."
PLAN_MAGIC = b"QUANTBENCH-FAKE-TENSORRT-PLAN\n"
TIMING_MAGIC = b"QUANTBENCH-FAKE-TENSORRT-TIMING-CACHE\n"


def surface_path(version: str) -> Path:
    return DATA / f"trt_surface_{version}.json"


def load_surface(version: str) -> dict[str, Any]:
    return json.loads(surface_path(version).read_text())


# --- pybind11 signatures ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    default: str | None  # the default's text, None when required

    @property
    def positional_only(self) -> bool:  # pybind11 names arguments without py::arg "arg0", "arg1", ...
        return re.fullmatch(r"arg\d+", self.name) is not None


@dataclass(frozen=True)
class Signature:
    text: str
    name: str
    params: tuple[Param, ...]  # without self
    returns: str


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets and outside ``<...>`` default reprs."""
    parts, depth, current = [], 0, []
    for char in text:
        if char in "[(<{":
            depth += 1
        elif char in "])>}":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if "".join(current).strip():
        parts.append("".join(current).strip())
    return parts


def parse_signature(text: str) -> Signature:
    match = re.fullmatch(r"(\w*)\((.*)\)(?: -> (.+))?", text.strip())
    if match is None:
        raise ValueError(f"not a pybind11 signature: {text!r}")
    params = []
    for part in _split_top_level(match[2]):
        name, _, rest = part.partition(":")
        type_text, _, default = rest.partition(" = ")
        if not rest and "=" in name:  # a Python signature: "name=default"
            name, _, default = name.partition("=")
        if name.strip() in ("self", "*args", "**kwargs") or name.strip().startswith("*"):
            continue
        params.append(Param(name.strip(), type_text.strip() or "object", default.strip() or None))
    return Signature(text, match[1], tuple(params), (match[3] or "None").strip())


# --- the type rules pybind11 applies -----------------------------------------------------------------


def _is_intlike(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) or (hasattr(type(value), "__index__") and not isinstance(value, float))


_SEQUENCE_OF_INT = re.compile(r"^(List|list|collections\.abc\.Sequence|Sequence)\[(int|typing\.SupportsInt)\]$")
_ANY = {"object", "typing.Any", "capsule", "os.PathLike", "Callable", "function", "None"}


def accepts(type_text: str, value: Any, module: types.ModuleType) -> bool:
    """Whether pybind11 would convert ``value`` for a parameter printed as ``type_text``."""
    t = type_text.strip()
    if t.startswith("Optional[") or t.endswith(" | None"):
        inner = t[len("Optional["):-1] if t.startswith("Optional[") else t[: -len(" | None")]
        return value is None or accepts(inner, value, module)
    if t in _ANY or "::" in t:
        return True
    if t in ("int", "typing.SupportsInt"):
        return _is_intlike(value)
    if t in ("float", "typing.SupportsFloat"):
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if t == "str":
        return isinstance(value, str)
    if t == "bool":
        return isinstance(value, (bool, np.bool_))
    if t in ("buffer", "typing_extensions.Buffer", "collections.abc.Buffer", "bytes"):
        return isinstance(value, (bytes, bytearray, memoryview, np.ndarray)) or hasattr(value, "__bytes__")
    if t == "tuple":
        return isinstance(value, tuple)
    if t == "list":
        return isinstance(value, list)
    if _SEQUENCE_OF_INT.match(t):
        return isinstance(value, (list, tuple)) and all(_is_intlike(v) for v in value)
    if re.match(r"^(List|list|collections\.abc\.Sequence)\[", t):
        return isinstance(value, (list, tuple))
    if t.startswith(PREFIX):
        name = t[len(PREFIX):]
        target = _lookup_type(module, name)
        if target is None:
            return True  # a class left out of the trimmed surface: not checked
        if name.split(".")[-1] in ("Dims", "Dims2", "Dims3", "Dims4", "DimsHW") and isinstance(value, (tuple, list)):
            return all(_is_intlike(v) for v in value)  # implicitly convertible from a sequence of ints
        return isinstance(value, target)
    return True  # a type the rules above do not know: accepted rather than guessed


def _lookup_type(module: types.ModuleType, dotted: str) -> type | None:
    target: Any = module
    for part in dotted.split("."):
        target = getattr(target, part, None)
        if target is None:
            return None
    return target if isinstance(target, type) else None


def _bind(signature: Signature, args: tuple, kwargs: dict, module: types.ModuleType) -> str | None:
    """None when the call matches this overload, else why not."""
    params = signature.params
    if len(args) > len(params):
        return f"{len(args)} positional arguments for {len(params)} parameters"
    bound = dict(zip((p.name for p in params), args))
    for key, value in kwargs.items():
        param = next((p for p in params if p.name == key), None)
        if param is None or param.positional_only:
            return f"no keyword argument {key!r}"
        if key in bound:
            return f"{key!r} given twice"
        bound[key] = value
    for param in params:
        if param.name not in bound:
            if param.default is None:
                return f"missing argument {param.name!r}"
            continue
        if not accepts(param.type, bound[param.name], module):
            return f"{param.name!r} is a {type(bound[param.name]).__name__}, not {param.type}"
    return None


def check_call(owner: str, member: str, signatures: Sequence[str], args: tuple, kwargs: dict,
               module: types.ModuleType) -> None:
    """Raise TypeError, as pybind11 does, unless one overload accepts the arguments."""
    parsed = [parse_signature(s) for s in signatures]
    reasons = [_bind(s, args, kwargs, module) for s in parsed]
    if parsed and all(r is not None for r in reasons):
        listed = "\n".join(f"    {i}. {s.text}  [{r}]" for i, (s, r) in enumerate(zip(parsed, reasons), 1))
        invoked = ", ".join([repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()])
        raise TypeError(f"{member}(): incompatible function arguments. The following argument types are "
                        f"supported:\n{listed}\n\nInvoked with: {owner}, {invoked}")


# --- checked objects ------------------------------------------------------------------------------------


class FakeTrtObject:
    """Base of every generated class: member access, calls and property writes follow the surface."""

    _qb_surface_name = "object"
    _qb_members: dict[str, dict] = {}
    _qb_module: types.ModuleType | None = None
    _qb_accessed: set[tuple[str, str]] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        cls = type(self)._qb_generated()
        init = cls._qb_members.get("__init__")
        if init is None:
            raise TypeError(f"tensorrt.{cls._qb_surface_name}: No constructor defined!")
        _note(cls, "__init__")
        check_call(cls._qb_surface_name, "__init__", init["signatures"], args, kwargs, cls._qb_module)
        object.__setattr__(self, "_props", {})
        object.__setattr__(self, "_qb_initialised", True)
        self._qb_init(*args, **kwargs)

    def _qb_init(self, *args: Any, **kwargs: Any) -> None:
        """Behaviour classes set up their state here (after the constructor's arguments were checked)."""

    @classmethod
    def _qb_generated(cls) -> type:
        return next(k for k in cls.__mro__ if "_qb_members" in vars(k))

    @classmethod
    def _qb_new(cls, **state: Any) -> FakeTrtObject:
        """An instance made by the fake itself (objects TensorRT returns have no Python constructor)."""
        obj = object.__new__(cls)
        object.__setattr__(obj, "_props", {})
        object.__setattr__(obj, "_qb_initialised", True)
        for key, value in state.items():
            object.__setattr__(obj, key, value)
        return obj

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("_"):
            return object.__getattribute__(self, name)
        cls = type(self)
        generated = cls._qb_generated()
        spec = generated._qb_members.get(name)
        if spec is None:
            if _user_defined(self, name, generated):
                return object.__getattribute__(self, name)
            raise AttributeError(f"'tensorrt.{generated._qb_surface_name}' object has no attribute '{name}'")
        _note(generated, name)
        if spec["kind"] == "property":
            return _read_property(self, name, generated)
        value = _implemented(self, name, generated)
        if spec["kind"] in ("method", "staticmethod") and callable(value):
            return _checked(value, generated, name, spec["signatures"])
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        generated = type(self)._qb_generated()
        spec = generated._qb_members.get(name)
        if spec is None and type(self) is not generated:
            object.__setattr__(self, name, value)  # a Python subclass (a logger) has a __dict__
            return
        if spec is None:
            raise AttributeError(f"'tensorrt.{generated._qb_surface_name}' object has no attribute '{name}'")
        if spec["kind"] != "property":
            raise AttributeError(f"'tensorrt.{generated._qb_surface_name}' object attribute '{name}' is read-only")
        if spec["readonly"]:
            raise AttributeError(f"property '{name}' of 'tensorrt.{generated._qb_surface_name}' object has no setter")
        if not accepts(spec["type"], value, generated._qb_module):
            raise TypeError(f"(): incompatible function arguments: {generated._qb_surface_name}.{name} takes "
                            f"{spec['type']}, got {type(value).__name__}")
        _note(generated, name)
        descriptor = _find_descriptor(type(self), name, generated)
        if isinstance(descriptor, property) and descriptor.fset is not None:
            descriptor.fset(self, value)
        else:
            self._props[name] = value


def _note(generated: type, name: str) -> None:
    if generated._qb_accessed is not None:
        generated._qb_accessed.add((generated._qb_surface_name, name))


def _user_defined(obj: Any, name: str, generated: type) -> bool:
    """A name a Python subclass of a TensorRT class added (its methods, its instance attributes)."""
    if type(obj) is generated:
        return False
    if name in object.__getattribute__(obj, "__dict__"):
        return True
    for klass in type(obj).__mro__:
        if klass is generated:
            return False
        if name in vars(klass):
            return True
    return False


def _find_descriptor(cls: type, name: str, generated: type) -> Any:
    for klass in cls.__mro__:
        if name in vars(klass) and klass is not FakeTrtObject:
            return vars(klass)[name]
    return None


def _read_property(obj: Any, name: str, generated: type) -> Any:
    descriptor = _find_descriptor(type(obj), name, generated)
    if isinstance(descriptor, property):
        return descriptor.fget(obj)
    props = object.__getattribute__(obj, "_props")
    if name in props:
        return props[name]
    raise NotImplementedError(f"the TensorRT fake does not model {generated._qb_surface_name}.{name}")


def _implemented(obj: Any, name: str, generated: type) -> Any:
    try:
        return object.__getattribute__(obj, name)
    except AttributeError:
        raise NotImplementedError(f"the TensorRT fake does not model {generated._qb_surface_name}.{name}()") from None


def _checked(function: Callable, generated: type, name: str, signatures: list[str]) -> Callable:
    def call(*args: Any, **kwargs: Any) -> Any:
        check_call(generated._qb_surface_name, name, signatures, args, kwargs, generated._qb_module)
        return function(*args, **kwargs)

    call.__name__ = name
    return call


# --- enums ----------------------------------------------------------------------------------------------


class FakeEnumValue:
    """A pybind11 enum member: compares equal to members of its own enum only, has ``__int__``/``__index__``."""

    _qb_enum = "enum"
    _qb_str: dict[str, str] = {}
    __members__: dict[str, FakeEnumValue] = {}

    def __init__(self, name: str, value: int) -> None:
        self._name, self._value = name, value

    def __int__(self) -> int:
        return self._value

    def __index__(self) -> int:
        return self._value

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._value == self._value  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((self._qb_enum, self._value))

    def __str__(self) -> str:
        return self._qb_str.get(self._name, f"{self._qb_enum.split('.')[-1]}.{self._name}")

    def __repr__(self) -> str:
        return f"<{self._qb_enum.split('.')[-1]}.{self._name}: {self._value}>"

    @property
    def value(self) -> int:
        return self._value


def _make_enum(qualified: str, spec: dict) -> type:
    short = qualified.split(".")[-1]
    namespace: dict[str, Any] = {"_qb_enum": qualified, "_qb_str": spec["str"]}
    if spec["name_is_method"]:  # before TensorRT 10.16, ErrorCode.name is a method, not a str
        namespace["name"] = lambda self: self._name
    else:
        namespace["name"] = property(lambda self: self._name)
    enum = type(short, (FakeEnumValue,), namespace)
    members = {name: enum(name, value) for name, value in sorted(spec["members"].items(), key=lambda kv: kv[1])}
    enum.__members__ = members
    for name, member in members.items():
        setattr(enum, name, member)
    return enum


# --- the module --------------------------------------------------------------------------------------------


@dataclass
class FakeState:
    """What the fake saw: members used (for the surface test), and knobs for negative controls."""

    version: str
    accessed: set[tuple[str, str]]
    refuse_profile: bool = False  # add_optimization_profile returns -1
    refuse_tensor_address: bool = False  # set_tensor_address returns False


def fake_tensorrt(version: str, *, simulated: str | None = None) -> types.ModuleType:
    """A ``tensorrt`` module for ``version``, built from ``tests/data/trt_surface_<version>.json``."""
    import trt_fake_engine as engine  # the simulated behaviour, kept apart from the checks

    surface = load_surface(version)
    module = types.ModuleType("tensorrt", f"FAKE tensorrt {version} (quantbench tests; not NVIDIA TensorRT)")
    module.__version__ = surface["version"]
    module.__quantbench_simulated__ = simulated or (
        f"fake TensorRT {surface['version']} (API surface of the real bindings; engines run the ONNX "
        "through ONNX Runtime on the CPU)")
    state = FakeState(surface["version"], set())
    module._qb_state = state
    enums: dict[str, type] = {}
    by_content: dict[str, type] = {}  # Logger.Severity is ILogger.Severity: one enum under two names
    for name, spec in sorted(surface["enums"].items(), key=lambda item: item[0].count(".")):
        key = json.dumps([name.split(".")[-1], spec["members"]], sort_keys=True)
        enums[name] = by_content.setdefault(key, _make_enum(name, spec))
    for name, enum in enums.items():
        if "." not in name:
            setattr(module, name, enum)
    behaviours = engine.behaviours()
    for name, spec in surface["classes"].items():
        base = behaviours.get(name, ())
        bases = (base, FakeTrtObject) if base else (FakeTrtObject,)
        cls = type(name, bases, {"_qb_surface_name": name, "_qb_members": spec["members"], "_qb_module": module,
                                 "_qb_accessed": state.accessed, "__module__": "tensorrt"})
        for member, member_spec in spec["members"].items():
            if member_spec["kind"] == "enum":
                setattr(cls, member, enums[member_spec["enum"]])
            elif member_spec["kind"] == "value" and "." in member_spec["repr"]:
                enum_name, _, rest = member_spec["repr"].strip("<>").partition(".")
                nested = enums.get(f"{name}.{enum_name}")
                if nested is not None:
                    setattr(cls, member, getattr(nested, rest.split(":")[0]))
        setattr(module, name, cls)
    for name, value in surface["values"].items():
        enum_name, _, member = value.partition(".")
        if enum_name in enums:  # (the bindings' __init__ also leaks a loop variable, `value`, of a nested enum)
            setattr(module, name, getattr(enums[enum_name], member))
    for name, spec in surface["functions"].items():
        setattr(module, name, _module_function(module, name, spec["signatures"], engine.functions(module, surface)))
    return module


def _module_function(module: types.ModuleType, name: str, signatures: list[str], implemented: dict) -> Callable:
    def call(*args: Any, **kwargs: Any) -> Any:
        module._qb_state.accessed.add(("tensorrt", name))
        check_call("tensorrt", name, signatures, args, kwargs, module)
        if name not in implemented:
            raise NotImplementedError(f"the TensorRT fake does not model tensorrt.{name}()")
        return implemented[name](*args, **kwargs)

    call.__name__ = name
    return call


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def host_function(callback: Callable[[], None]) -> tuple[Any, int]:
    """A C function pointer calling ``callback`` (for cudaLaunchHostFunc); keep the first item alive."""
    c_callback = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda _data: callback())
    return c_callback, ctypes.cast(c_callback, ctypes.c_void_p).value


LOCK = threading.Lock()  # ONNX Runtime sessions are shared between a context's host functions


def install(version: str, monkeypatch: Any, *, cuda_standin: bool = True) -> types.ModuleType:
    """Put the fake ``tensorrt`` of ``version`` in ``sys.modules`` (and, by default, the CPU CUDA stand-in)."""
    import sys

    module = fake_tensorrt(version)
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    if cuda_standin:
        import cuda_standin as standin

        standin.install(monkeypatch)
    return module
