"""The simulated behaviour behind the FAKE TensorRT module (``trt_fake.py`` checks every call first).

Each class here is mixed into the class of the same name that ``trt_fake.fake_tensorrt`` generates
from a surface, so a method only exists where the real version has it. What is simulated:

- parser: reads the ONNX with ``onnx``; nodes outside the standard domain are UNSUPPORTED_NODE;
- builder: needs an optimization profile for dynamic inputs, writes a JSON "plan" that names the
  ONNX and its sha256, and adds one entry per build to the timing cache;
- runtime/engine/context: I/O tensors from the ONNX, shapes checked against the profile; the
  "kernels" are ONNX Runtime on the CPU (``OrtBackend.open_onnx``, so float16 QuantizeLinear is
  computed as TensorRT does), enqueued on the caller's stream through the CUDA runtime that
  ``quantbench.backends.cuda.cudart()`` answers: copy the input to pinned memory, a host function
  (``cudaLaunchHostFunc``, capturable into CUDA graphs) runs the ONNX, copy the output back;
- inspector: TensorRT's engine-information JSON (10.x ``Bindings`` + ``Format/Datatype``, 11.x
  ``I/O Tensors`` + ``DataType``/``Format``) with one layer per ONNX node (Q/DQ fused into their
  consumers, INT8 where a node is fed by a DequantizeLinear). As in TensorRT, formats are left out
  and shapes are -1 unless an execution context with every input shape set is attached.
"""

from __future__ import annotations

import json
import weakref
from pathlib import Path
from typing import Any

import numpy as np
from trt_fake import LOCK, PLAN_MAGIC, TIMING_MAGIC, host_function, sha256_of

ONNX_TO_TRT = {1: "FLOAT", 10: "HALF", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 2: "UINT8", 16: "BF16", 17: "FP8"}
TRT_TO_NUMPY = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
                "BOOL": np.bool_, "UINT8": np.uint8}
# How the inspector names data types: TensorRT 10 "Format/Datatype" strings, TensorRT 11 "DataType".
FORMAT_10 = {"FLOAT": "Row major linear FP32", "HALF": "Row major linear FP16 format", "INT8": "Row major Int8 format",
             "INT32": "Row major linear Int32", "INT64": "Row major linear Int64", "BOOL": "Row major linear Bool",
             "UINT8": "Row major linear UInt8 format"}
DATATYPE_11 = {"FLOAT": "Float", "HALF": "Half", "INT8": "Int8", "INT32": "Int32", "INT64": "Int64", "BOOL": "Bool",
               "UINT8": "UInt8"}
LAYER_TYPES = {"Conv": "CaskConvolution", "MatMul": "CaskGemm", "Gemm": "CaskGemm", "Constant": "Constant",
               "Shape": "Shape", "Cast": "Cast", "Concat": "NoOp", "MaxPool": "CaskPooling", "Resize": "Resize"}


def _log(logger: Any, trt: Any, severity: str, message: str) -> None:
    logger.log(getattr(trt.ILogger.Severity, severity), f"[fake TensorRT] {message}")


def _dims(trt: Any, values: Any) -> Any:
    return trt.Dims._qb_new(_values=tuple(int(v) for v in values))


class Dims:
    def _qb_init(self, shape: Any = ()) -> None:
        self._values = tuple(int(v) for v in shape)

    def __len__(self) -> int:
        return len(self._values)

    def __getitem__(self, index: Any) -> Any:
        return self._values[index]

    def __repr__(self) -> str:
        return f"{self._values}"


class IHostMemory:
    def __bytes__(self) -> bytes:
        return self._data

    @property
    def nbytes(self) -> int:
        return len(self._data)


class ITensor:
    @property
    def name(self) -> str:
        return self._name

    @property
    def shape(self) -> Any:
        return _dims(self._qb_module, self._shape)

    @property
    def dtype(self) -> Any:
        return getattr(self._qb_module.DataType, self._dtype)


class INetworkDefinition:
    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_input(self, index: int) -> Any:
        return self._tensor(self._inputs, index)

    def get_output(self, index: int) -> Any:
        return self._tensor(self._outputs, index)

    def _tensor(self, tensors: list, index: int) -> Any:
        if not 0 <= index < len(tensors):
            return None
        name, shape, dtype = tensors[index]
        return self._qb_module.ITensor._qb_new(_name=name, _shape=shape, _dtype=dtype)


class ParserError:
    def code(self) -> Any:
        return getattr(self._qb_module.ErrorCode, self._code)

    def desc(self) -> str:
        return self._desc

    def node(self) -> int:
        return self._node

    def node_name(self) -> str:
        return self._node_name

    def node_operator(self) -> str:
        return self._operator


def _onnx_tensors(values: Any, skip: set[str]) -> list[tuple[str, tuple[int, ...], str, tuple]]:
    tensors = []
    for value in values:
        if value.name in skip:
            continue
        dims = value.type.tensor_type.shape.dim
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
        symbols = tuple(d.dim_param if d.HasField("dim_param") else None for d in dims)
        tensors.append((value.name, shape, ONNX_TO_TRT.get(value.type.tensor_type.elem_type, "FLOAT"), symbols))
    return tensors


class OnnxParser:
    def _qb_init(self, network: Any, logger: Any) -> None:
        self._network, self._logger, self._errors = network, logger, []

    def parse_from_file(self, model: str) -> bool:
        import onnx

        trt, path = self._qb_module, Path(model)
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:
            self._error("MODEL_DESERIALIZE_FAILED", -1, "", "", f"Failed to parse the ONNX file {path}: {exc}")
            return False
        for index, node in enumerate(proto.graph.node):
            if node.domain not in ("", "ai.onnx"):
                self._error("UNSUPPORTED_NODE", index, node.name, node.op_type,
                            f"No importer registered for op: {node.op_type}. Attempting to import as plugin.")
        if self._errors:
            _log(self._logger, trt, "ERROR", f"{len(self._errors)} parser errors in {path}")
            return False
        initializers = {i.name for i in proto.graph.initializer}
        net = self._network
        net._inputs = [t[:3] for t in _onnx_tensors(proto.graph.input, initializers)]
        net._outputs = [t[:3] for t in _onnx_tensors(proto.graph.output, set())]
        net._symbols = {t[0]: t[3] for t in _onnx_tensors([*proto.graph.input, *proto.graph.output], initializers)}
        net._onnx, net._sha256 = str(path.resolve()), sha256_of(path)
        return True

    def _error(self, code: str, node: int, name: str, operator: str, desc: str) -> None:
        self._errors.append(self._qb_module.ParserError._qb_new(
            _code=code, _node=node, _node_name=name, _operator=operator, _desc=desc))

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> Any:
        return self._errors[index] if 0 <= index < len(self._errors) else None

    def clear_errors(self) -> None:
        self._errors = []


class IOptimizationProfile:
    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:
        low, mid, high = (tuple(int(v) for v in s) for s in (min, opt, max))
        if not (len(low) == len(mid) == len(high)) or not all(0 <= a <= b <= c for a, b, c in zip(low, mid, high)):
            raise ValueError(f"[fake TensorRT] inconsistent shapes for {input}: min {low}, opt {mid}, max {high}")
        self._shapes[input] = (low, mid, high)

    def get_shape(self, input: str) -> list:
        return [_dims(self._qb_module, s) for s in self._shapes.get(input, ())]


class ITimingCache:
    def serialize(self) -> Any:
        body = json.dumps({"tensorrt": self._version, "entries": sorted(self._entries)}).encode()
        return self._qb_module.IHostMemory._qb_new(_data=TIMING_MAGIC + body)

    def combine(self, input_cache: Any, ignore_mismatch: bool) -> bool:
        if input_cache._version != self._version:  # "generated by a TensorRT build of exact same version"
            return False
        self._entries |= input_cache._entries
        return True

    def reset(self) -> bool:
        self._entries = set()
        return True


class IBuilderConfig:
    def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
        self._pools[str(pool)] = int(pool_size)

    def add_optimization_profile(self, profile: Any) -> int:
        if self._qb_module._qb_state.refuse_profile or not profile._shapes:
            return -1
        self._profiles.append(profile)
        return len(self._profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: Any) -> Any:
        data = bytes(serialized_timing_cache)
        trt = self._qb_module
        if not data:
            return trt.ITimingCache._qb_new(_version=trt.__version__, _entries=set())
        if not data.startswith(TIMING_MAGIC):
            return None
        body = json.loads(data[len(TIMING_MAGIC):])
        return trt.ITimingCache._qb_new(_version=body["tensorrt"], _entries=set(body["entries"]))

    def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool:
        if cache._version != self._qb_module.__version__ and not ignore_mismatch:
            return False
        self._timing = cache
        return True

    def get_timing_cache(self) -> Any:
        return self._timing


class Builder:
    def _qb_init(self, logger: Any) -> None:
        self._logger = logger

    def create_network(self, flags: int = 0) -> Any:
        trt = self._qb_module
        known = 0
        for member in trt.NetworkDefinitionCreationFlag.__members__.values():
            known |= 1 << int(member)
        if int(flags) & ~known:
            _log(self._logger, trt, "ERROR", f"create_network: unknown creation flags {int(flags):#x}")
            return None
        strongly = int(trt.__version__.split(".")[0]) >= 11 or bool(
            int(flags) & (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
        return trt.INetworkDefinition._qb_new(_flags=int(flags), _strongly_typed=strongly, _inputs=[], _outputs=[],
                                              _symbols={}, _onnx=None, _sha256=None)

    def create_builder_config(self) -> Any:
        return self._qb_module.IBuilderConfig._qb_new(_profiles=[], _pools={}, _timing=None)

    def create_optimization_profile(self) -> Any:
        return self._qb_module.IOptimizationProfile._qb_new(_shapes={})

    def build_serialized_network(self, network: Any, config: Any, *kernel_text: Any) -> Any:
        trt = self._qb_module
        if network._onnx is None:
            _log(self._logger, trt, "ERROR", "Network must have at least one output")
            return None
        profile = {}
        for name, shape, _ in network._inputs:
            shapes = next((p._shapes[name] for p in config._profiles if name in p._shapes), None)
            if shapes is None and any(d < 0 for d in shape):
                _log(self._logger, trt, "ERROR", f"Network has dynamic or shape inputs, but no optimization profile "
                                                 f"has been defined ({name} {shape}).")
                return None
            profile[name] = shapes or (shape, shape, shape)
        verbosity = config._props.get("profiling_verbosity", trt.ProfilingVerbosity.LAYER_NAMES_ONLY)
        plan = {"tensorrt": trt.__version__, "onnx": network._onnx, "onnx_sha256": network._sha256,
                "inputs": network._inputs, "outputs": network._outputs, "symbols": network._symbols,
                "profile": profile, "strongly_typed": network._strongly_typed,
                "detailed": verbosity == trt.ProfilingVerbosity.DETAILED,
                "optimization_level": int(config._props.get("builder_optimization_level", 3))}
        if config._timing is not None:
            config._timing._entries.add(f"{network._sha256}:{plan['optimization_level']}")
        _log(self._logger, trt, "INFO", f"simulated build of {network._onnx}")
        return trt.IHostMemory._qb_new(_data=PLAN_MAGIC + json.dumps(plan).encode())


class Runtime:
    def _qb_init(self, logger: Any) -> None:
        self._logger = logger

    def deserialize_cuda_engine(self, serialized_engine: Any) -> Any:
        trt, data = self._qb_module, bytes(serialized_engine)
        if not data.startswith(PLAN_MAGIC):
            _log(self._logger, trt, "ERROR", "IRuntime::deserializeCudaEngine: Error Code 1: Serialization (magic tag mismatch)")
            return None
        plan = json.loads(data[len(PLAN_MAGIC):])
        if plan["tensorrt"] != trt.__version__:
            _log(self._logger, trt, "ERROR", f"The engine plan file is not compatible with this version of TensorRT, "
                                             f"expecting {trt.__version__} got {plan['tensorrt']}")
            return None
        if not Path(plan["onnx"]).is_file() or sha256_of(Path(plan["onnx"])) != plan["onnx_sha256"]:
            _log(self._logger, trt, "ERROR", f"the ONNX this fake plan runs changed or vanished: {plan['onnx']}")
            return None
        return trt.ICudaEngine._qb_new(_plan=plan, _logger=self._logger, _runner=None)


class ICudaEngine:
    def _io(self) -> list[tuple[str, list, str]]:
        return [*self._plan["inputs"], *self._plan["outputs"]]

    @property
    def num_io_tensors(self) -> int:
        return len(self._io())

    def get_tensor_name(self, index: int) -> Any:
        io = self._io()
        return io[index][0] if 0 <= index < len(io) else None

    def get_tensor_mode(self, name: str) -> Any:
        modes = self._qb_module.TensorIOMode
        if any(t[0] == name for t in self._plan["inputs"]):
            return modes.INPUT
        return modes.OUTPUT if any(t[0] == name for t in self._plan["outputs"]) else modes.NONE

    def _tensor(self, name: str) -> tuple[str, list, str]:
        return next(t for t in self._io() if t[0] == name)

    def get_tensor_dtype(self, name: str) -> Any:
        return getattr(self._qb_module.DataType, self._tensor(name)[2])

    def get_tensor_shape(self, name: str) -> Any:
        return _dims(self._qb_module, self._tensor(name)[1])

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list:
        if profile_index != 0 or name not in self._plan["profile"]:
            return []
        return [_dims(self._qb_module, s) for s in self._plan["profile"][name]]

    @property
    def device_memory_size(self) -> int:
        return self._activation_bytes()

    @property
    def device_memory_size_v2(self) -> int:
        return self._activation_bytes()

    def _activation_bytes(self) -> int:
        return 4 * sum(int(np.prod(high)) for _, _, high in self._plan["profile"].values())

    def create_execution_context(self, *args: Any, **kwargs: Any) -> Any:
        return self._qb_module.IExecutionContext._qb_new(
            _engine=self, _shapes={}, _addresses={}, _staging=None, _host_functions={}, _failure=None)

    def create_engine_inspector(self) -> Any:
        return self._qb_module.EngineInspector._qb_new(_engine=self)

    def _session(self) -> Any:
        if self._runner is None:
            from quantbench.backends import BuildOptions
            from quantbench.backends.ort import OrtBackend

            self._runner = OrtBackend(use_cuda=False).open_onnx(Path(self._plan["onnx"]), BuildOptions())
        return self._runner


class IExecutionContext:
    def set_input_shape(self, name: str, shape: Any) -> bool:
        engine, trt = self._engine, self._qb_module
        values = tuple(int(v) for v in shape)
        low, _, high = engine._plan["profile"].get(name, (None, None, None))
        if low is None or len(values) != len(low) or not all(a <= v <= b for v, a, b in zip(values, low, high)):
            _log(engine._logger, trt, "ERROR", f"IExecutionContext::setInputShape: Error Code 3: API Usage Error "
                                               f"({name}: {values} is outside the profile {low} to {high})")
            return False
        self._shapes[name] = values
        return True

    def _all_shapes_set(self) -> bool:
        return all(t[0] in self._shapes for t in self._engine._plan["inputs"])

    def get_tensor_shape(self, name: str) -> Any:
        trt, plan = self._qb_module, self._engine._plan
        if name in self._shapes:
            return _dims(trt, self._shapes[name])
        if any(t[0] == name for t in plan["outputs"]) and self._all_shapes_set():
            return _dims(trt, self._output_shape(name))
        return self._engine.get_tensor_shape(name)

    def _output_shape(self, name: str) -> tuple[int, ...]:
        plan = self._engine._plan
        known = {}
        for tensor in plan["inputs"]:
            for symbol, value in zip(plan["symbols"][tensor[0]], self._shapes[tensor[0]]):
                if symbol:
                    known[symbol] = value
        static = next(t[1] for t in plan["outputs"] if t[0] == name)
        shape = tuple(d if d >= 0 else known.get(s, -1) for d, s in zip(static, plan["symbols"][name]))
        if any(d < 0 for d in shape):  # a symbol no input carries: ask ONNX Runtime once
            (inp,) = plan["inputs"]
            probe = np.zeros(self._shapes[inp[0]], TRT_TO_NUMPY[inp[2]])
            with LOCK:
                shape = tuple(self._engine._session().infer(probe).shape)
        return shape

    def set_tensor_address(self, name: str, memory: int) -> bool:
        engine, trt = self._engine, self._qb_module
        if trt._qb_state.refuse_tensor_address or memory == 0 or all(t[0] != name for t in engine._io()):
            _log(engine._logger, trt, "ERROR", f"IExecutionContext::setTensorAddress: Error Code 3: {name!r} at {memory:#x}")
            return False
        self._addresses[name] = int(memory)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        from quantbench.backends import cuda

        engine, trt, plan = self._engine, self._qb_module, self._engine._plan
        names = [t[0] for t in engine._io()]
        if not self._all_shapes_set() or any(n not in self._addresses for n in names):
            _log(engine._logger, trt, "ERROR", "IExecutionContext::enqueueV3: Error Code 3: API Usage Error "
                                               "(an input shape or a tensor address is not set)")
            return False
        (inp,), (out,) = plan["inputs"], plan["outputs"]
        in_shape, out_shape = self._shapes[inp[0]], self._output_shape(out[0])
        staging_in, staging_out = self._staging_for(inp, out)
        engine._session()  # opened here, not in the host function: that runs on a CUDA driver thread
        in_bytes = int(np.prod(in_shape)) * np.dtype(TRT_TO_NUMPY[inp[2]]).itemsize
        out_bytes = int(np.prod(out_shape)) * np.dtype(TRT_TO_NUMPY[out[2]]).itemsize
        rt = cuda.cudart()
        kinds = rt.cudaMemcpyKind
        cuda.check(rt.cudaMemcpyAsync(staging_in.ptr, self._addresses[inp[0]], in_bytes, kinds.cudaMemcpyDeviceToHost,
                                      stream_handle), "fake enqueue: input to host")
        cuda.check(rt.cudaLaunchHostFunc(stream_handle, rt.cudaHostFn_t(self._host_function(in_shape, out_shape)), 0),
                   "fake enqueue: cudaLaunchHostFunc")
        cuda.check(rt.cudaMemcpyAsync(self._addresses[out[0]], staging_out.ptr, out_bytes, kinds.cudaMemcpyHostToDevice,
                                      stream_handle), "fake enqueue: output to device")
        return True

    def _staging_for(self, inp: list, out: list) -> tuple[Any, Any]:
        """Pinned host buffers for the largest shapes, allocated at the first enqueue (never during a capture)."""
        from quantbench.backends import cuda

        if self._staging is None:
            high = tuple(self._engine._plan["profile"][inp[0]][2])
            saved = dict(self._shapes)
            self._shapes[inp[0]] = high
            out_high = self._output_shape(out[0])
            self._shapes = saved
            self._staging = (cuda.PinnedBuffer(high, TRT_TO_NUMPY[inp[2]]), cuda.PinnedBuffer(out_high, TRT_TO_NUMPY[out[2]]))
            weakref.finalize(self, _free, self._staging)  # pinned memory goes back with the context
        return self._staging

    def _host_function(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> int:
        """The C function pointer that runs the ONNX on the staged input; one per shape (graphs replay it)."""
        if in_shape not in self._host_functions:
            staging_in, staging_out = self._staging

            def run() -> None:
                try:
                    batch = staging_in.array.reshape(-1)[: int(np.prod(in_shape))].reshape(in_shape)
                    with LOCK:
                        result = self._engine._session().infer(np.array(batch))
                    flat = staging_out.array.reshape(-1)
                    flat[: result.size] = result.astype(flat.dtype, copy=False).reshape(-1)
                except Exception as exc:
                    self._failure = exc

            self._host_functions[in_shape] = host_function(run)
        return self._host_functions[in_shape][1]



def _free(buffers: tuple) -> None:
    for buffer in buffers:
        try:
            buffer.close()
        except Exception:
            pass


class EngineInspector:
    @property
    def execution_context(self) -> Any:
        return self._props.get("execution_context")

    @execution_context.setter
    def execution_context(self, context: Any) -> None:
        self._props["execution_context"] = context

    def get_engine_information(self, format: Any) -> str:
        trt = self._qb_module
        info = engine_information(self._engine._plan, self._known_shapes(), int(trt.__version__.split(".")[0]))
        if format == trt.LayerInformationFormat.ONELINE:
            return "\n".join(layer if isinstance(layer, str) else layer["Name"] for layer in info["Layers"])
        return json.dumps(info, indent=1)

    def _known_shapes(self) -> dict[str, tuple[int, ...]] | None:
        """Input shapes from the attached context; None unless every input's shape is known (TensorRT's rule)."""
        plan = self._engine._plan
        context = self._props.get("execution_context")
        shapes = {}
        for name, static, _ in plan["inputs"]:
            if context is not None and name in context._shapes:
                shapes[name] = context._shapes[name]
            elif all(d >= 0 for d in static):
                shapes[name] = tuple(static)
            else:
                return None
        return shapes


def engine_information(plan: dict, input_shapes: dict | None, major: int) -> dict:
    """One simulated layer per ONNX node, in the engine-information JSON of TensorRT ``major``."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(plan["onnx"]))
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info, *graph.output]}
    types.update({i.name: i.data_type for i in graph.initializer})
    weights = {i.name: i for i in graph.initializer}
    dequantized = {o: n.input[0] for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    names = [node.op_type + ":" + node.name for node in graph.node if node.op_type != "DequantizeLinear"]
    if not plan["detailed"]:
        return {"Layers": names, "Bindings": [t[0] for t in (*plan["inputs"], *plan["outputs"])]}
    layers = [_layer(node, types, weights, dequantized, input_shapes, major)
              for node in graph.node if node.op_type != "DequantizeLinear"]
    io_key = "I/O Tensors" if major >= 11 else "Bindings"
    return {"Layers": layers, io_key: [t[0] for t in (*plan["inputs"], *plan["outputs"])],
            "_about": "simulated by quantbench's fake TensorRT (tests/trt_fake_engine.py): not TensorRT output"}


def _layer(node: Any, types: dict, weights: dict, dequantized: dict, shapes: dict | None, major: int) -> dict:
    int8 = any(i in dequantized for i in node.input)
    activation = "INT8" if int8 else ONNX_TO_TRT.get(types.get(node.input[0] if node.input else "", 1), "FLOAT")
    out_type = "INT8" if node.op_type == "QuantizeLinear" else ONNX_TO_TRT.get(types.get(node.output[0], 1), "FLOAT")
    layer = {"Name": node.name, "LayerType": "Reformat" if node.op_type == "QuantizeLinear" else LAYER_TYPES.get(node.op_type, "PointWiseV2"),
             "Inputs": [_tensor(i, activation, shapes, major) for i in node.input[:1]],
             "Outputs": [_tensor(o, out_type, shapes, major) for o in node.output[:1]],
             "Metadata": f"[ONNX Layer: {node.name}]"}
    if node.op_type == "QuantizeLinear":
        layer["Origin"] = "QDQ"
    if node.op_type == "Conv":
        source = dequantized.get(node.input[1], node.input[1])
        init = weights.get(source)
        count = int(np.prod(init.dims)) if init is not None else 0
        kind = "INT8" if node.input[1] in dequantized else ONNX_TO_TRT.get(types.get(source, 1), "FLOAT")
        layer["Weights"] = {"Type": DATATYPE_11.get(kind, "Float"), "Count": count}
    return layer


def _tensor(name: str, dtype: str, shapes: dict | None, major: int) -> dict:
    tensor: dict[str, Any] = {"Name": name, "Location": "Device"}
    if shapes is None:  # shape-dependent values are -1 and formats are not shown
        tensor["Dimensions"] = [-1]
        return tensor
    tensor["Dimensions"] = list(next(iter(shapes.values())))
    if major >= 11:
        tensor["DataType"] = DATATYPE_11.get(dtype, "Float")
        tensor["Format"] = "Row major linear (kLINEAR)"
    else:
        tensor["Format/Datatype"] = FORMAT_10.get(dtype, "Row major linear FP32")
    return tensor


def behaviours() -> dict[str, type]:
    """Surface class name -> behaviour mixin (the names the Python bindings use)."""
    return {cls.__name__: cls for cls in (Dims, IHostMemory, ITensor, INetworkDefinition, ParserError, OnnxParser,
                                          IOptimizationProfile, ITimingCache, IBuilderConfig, Builder, Runtime,
                                          ICudaEngine, IExecutionContext, EngineInspector)}


def functions(module: Any, surface: dict) -> dict[str, Any]:
    """Module functions the fake models: ``nptype`` answers what the real one answered for each DataType."""

    def nptype(trt_type: Any) -> Any:
        answer = surface["nptype"].get(getattr(trt_type, "_name", None), "TypeError: not a DataType")
        if answer.startswith("TypeError"):
            raise TypeError(answer.partition(": ")[2])
        return getattr(np, answer, None) or getattr(np, answer + "_")  # numpy 1 names it bool_

    def volume(iterable: Any) -> int:
        result = 1
        for value in iterable:
            result *= value
        return result

    return {"nptype": nptype, "volume": volume}
