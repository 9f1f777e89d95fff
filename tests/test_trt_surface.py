"""The TensorRT backend held against the API surfaces of NVIDIA's real bindings (``tests/data/trt_surface_*.json``).

The surfaces were written by ``tools/trt_surface.py`` from the real ``tensorrt-cu12-bindings`` /
``tensorrt-cu13-bindings`` wheels (imported with stub native libraries; no TensorRT code ran). The
FAKE at the TensorRT boundary (``trt_fake.py``) is generated from them; the negative controls below
show that it refuses each kind of mistake the real binding refuses, with mistakes taken from the
real 10.x -> 11.x API changes.
"""

from __future__ import annotations

import json

import pytest
import trt_fake

from quantbench.backends.trt_version import TrtApi

VERSIONS = trt_fake.SURFACE_VERSIONS
STUBBED_SYMBOLS = {  # what tensorrt.so imports from libnvinfer / libnvonnxparser / libnvinfer_plugin
    "createInferBuilder_INTERNAL", "createInferRuntime_INTERNAL", "createInferRefitter_INTERNAL",
    "createNvOnnxParser_INTERNAL", "createNvOnnxParserRefitter_INTERNAL", "getBuilderPluginRegistry",
    "getNvOnnxParserVersion", "getPluginRegistry", "initLibNvInferPlugins",
}

# Every TensorRT member backends/trt.py uses, by the class names of the Python bindings. The flow
# test (test_trt_fake_flow.py) checks that the backend uses nothing else.
BACKEND_USES = {
    "Builder": ("__init__", "create_network", "create_builder_config", "create_optimization_profile",
                "build_serialized_network"),
    "OnnxParser": ("__init__", "parse_from_file", "num_errors", "get_error"),
    "ParserError": ("code", "desc", "node", "node_name", "node_operator"),
    "INetworkDefinition": ("num_inputs", "num_outputs", "get_input"),
    "ITensor": ("name", "shape"),
    "IBuilderConfig": ("set_memory_pool_limit", "builder_optimization_level", "profiling_verbosity",
                       "add_optimization_profile", "create_timing_cache", "set_timing_cache", "get_timing_cache"),
    "IOptimizationProfile": ("set_shape",),
    "ITimingCache": ("serialize", "combine"),
    "Runtime": ("__init__", "deserialize_cuda_engine"),
    "ICudaEngine": ("num_io_tensors", "get_tensor_name", "get_tensor_mode", "get_tensor_dtype", "get_tensor_shape",
                    "get_tensor_profile_shape", "create_execution_context", "create_engine_inspector"),
    "IExecutionContext": ("set_input_shape", "get_tensor_shape", "set_tensor_address", "execute_async_v3"),
    "EngineInspector": ("execution_context", "get_engine_information"),
    "ILogger": ("__init__", "log"),
}
BACKEND_ENUMS = {  # enum members the backend names
    "MemoryPoolType": ("WORKSPACE",), "ProfilingVerbosity": ("DETAILED",), "LayerInformationFormat": ("JSON",),
    "TensorIOMode": ("INPUT",), "ErrorCode": ("UNSUPPORTED_NODE", "INVALID_NODE", "MODEL_DESERIALIZE_FAILED"),
    "ILogger.Severity": ("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"),
}


@pytest.mark.parametrize("version", VERSIONS)
def test_each_surface_is_the_real_binding_of_its_version(version):
    surface = trt_fake.load_surface(version)
    assert surface["version"] == version
    assert surface["source"]["package"].endswith(f"-bindings=={version}")
    assert set(surface["source"]["stubbed_symbols"]) == STUBBED_SYMBOLS
    assert {lib.split(".so")[0] for lib in surface["source"]["stubbed_libraries"]} == {
        "libnvinfer", "libnvonnxparser", "libnvinfer_plugin"}
    assert trt_fake.surface_path(version).stat().st_size < 512 * 1024  # trimmed


@pytest.mark.parametrize("version", VERSIONS)
def test_every_member_the_backend_uses_exists_in_every_surface(version):
    surface = trt_fake.load_surface(version)
    missing = [f"{cls}.{m}" for cls, members in BACKEND_USES.items() for m in members
               if m not in surface["classes"].get(cls, {}).get("members", {})]
    missing += [f"{enum}.{m}" for enum, members in BACKEND_ENUMS.items() for m in members
                if m not in surface["enums"][enum]["members"]]
    api = TrtApi.from_version(version)  # the version-dependent members, as TrtApi picks them
    memory = "device_memory_size_v2" if (api.major, api.minor) >= (10, 1) else "device_memory_size"
    if memory not in surface["classes"]["ICudaEngine"]["members"]:
        missing.append(f"ICudaEngine.{memory}")
    if not api.always_strongly_typed and "STRONGLY_TYPED" not in surface["enums"]["NetworkDefinitionCreationFlag"]["members"]:
        missing.append("NetworkDefinitionCreationFlag.STRONGLY_TYPED")
    assert missing == []


def test_the_surfaces_show_the_api_changes_the_backend_branches_on():
    """What TrtApi and parser_error_message account for, read from the real bindings."""
    s = {v: trt_fake.load_surface(v) for v in VERSIONS}
    engine = {v: s[v]["classes"]["ICudaEngine"]["members"] for v in VERSIONS}
    assert "device_memory_size_v2" not in engine["10.0.1"] and "device_memory_size_v2" in engine["10.1.0"]
    assert "device_memory_size" not in engine["11.4.0.106"]
    flags = {v: s[v]["enums"]["NetworkDefinitionCreationFlag"]["members"] for v in VERSIONS}
    assert flags["10.16.1.11"]["STRONGLY_TYPED"] == 1 and flags["11.4.0.106"]["STRONGLY_TYPED"] == 0
    assert "EXPLICIT_BATCH" in flags["10.0.1"] and "EXPLICIT_BATCH" not in flags["11.4.0.106"]
    assert "FP16" in s["10.16.1.11"]["enums"]["BuilderFlag"]["members"]
    assert "FP16" not in s["11.4.0.106"]["enums"]["BuilderFlag"]["members"]
    name_is_method = {v: s[v]["enums"]["ErrorCode"]["name_is_method"] for v in VERSIONS}
    assert name_is_method == {"10.0.1": True, "10.1.0": True, "10.8.0.43": True, "10.16.1.11": False, "11.4.0.106": False}
    assert {s[v]["enums"]["ErrorCode"]["str"]["UNSUPPORTED_NODE"] for v in VERSIONS} == {"ErrorCode.UNSUPPORTED_NODE"}
    for v in VERSIONS:  # nptype knows no BF16 / FP8 / INT4 (FP4 from 10.8)
        assert s[v]["nptype"]["BF16"].startswith("TypeError") and s[v]["nptype"]["HALF"] == "float16"


# --- negative controls: the fake refuses what the real binding refuses ---------------------------------------


@pytest.fixture(params=["10.0.1", "11.4.0.106"])
def trt(request):
    return trt_fake.fake_tensorrt(request.param)


def _config(trt):
    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            pass

    builder = trt.Builder(Logger())
    return builder, builder.create_builder_config()


def test_unknown_members_are_refused(trt):
    builder, config = _config(trt)
    with pytest.raises(AttributeError, match="'tensorrt.IBuilderConfig' object has no attribute 'max_workspace_size'"):
        config.max_workspace_size = 1 << 30  # removed in TensorRT 10
    with pytest.raises(AttributeError, match="no attribute 'build_engine'"):
        builder.build_engine  # noqa: B018 - removed in TensorRT 10: build_serialized_network
    with pytest.raises(AttributeError):
        trt.BuilderFlag.INT8 if trt.__version__.startswith("11") else trt.BuilderFlag.NO_SUCH_FLAG


def test_wrong_argument_count_names_and_types_are_refused(trt):
    builder, config = _config(trt)
    pool = trt.MemoryPoolType.WORKSPACE
    config.set_memory_pool_limit(pool, 1 << 20)  # right
    config.set_memory_pool_limit(pool=pool, pool_size=1 << 20)  # right, by keyword
    with pytest.raises(TypeError, match="incompatible function arguments"):
        config.set_memory_pool_limit(pool)  # too few
    with pytest.raises(TypeError, match="incompatible function arguments"):
        config.set_memory_pool_limit(pool, 1 << 20, 3)  # too many
    with pytest.raises(TypeError, match="no keyword argument 'size'"):
        config.set_memory_pool_limit(pool=pool, size=1 << 20)  # wrong name
    with pytest.raises(TypeError, match="'pool_size' is a str"):
        config.set_memory_pool_limit(pool, "1 GiB")  # wrong type
    with pytest.raises(TypeError, match="'pool' is a int"):
        config.set_memory_pool_limit(0, 1 << 20)  # an int is not a MemoryPoolType
    with pytest.raises(TypeError, match="incompatible function arguments"):
        builder.create_network(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED, 0)


def test_read_only_and_mistyped_properties_are_refused(trt):
    builder, config = _config(trt)
    config.builder_optimization_level = 3
    with pytest.raises(TypeError, match="builder_optimization_level takes int"):
        config.builder_optimization_level = "3"
    with pytest.raises(TypeError, match="profiling_verbosity takes"):
        config.profiling_verbosity = "DETAILED"
    network = builder.create_network(0)
    with pytest.raises(AttributeError, match="property 'num_inputs' of 'tensorrt.INetworkDefinition' object has no setter"):
        network.num_inputs = 1


def test_constructors_follow_the_binding(trt):
    with pytest.raises(TypeError, match="No constructor defined"):
        trt.ICudaEngine()
    with pytest.raises(TypeError, match="incompatible function arguments"):
        trt.Builder()  # needs a logger
    with pytest.raises(TypeError, match="'logger' is a str"):
        trt.Runtime("logger")


def test_pybind11_enums_behave_like_the_real_ones():
    old, new = trt_fake.fake_tensorrt("10.0.1"), trt_fake.fake_tensorrt("10.16.1.11")
    assert callable(old.ErrorCode.UNSUPPORTED_NODE.name)  # the real 10.0 binding: a method
    assert new.ErrorCode.UNSUPPORTED_NODE.name == "UNSUPPORTED_NODE"
    assert str(old.ErrorCode.UNSUPPORTED_NODE) == str(new.ErrorCode.UNSUPPORTED_NODE) == "ErrorCode.UNSUPPORTED_NODE"
    assert int(old.ILogger.Severity.WARNING) == 2 and old.ILogger.WARNING == old.ILogger.Severity.WARNING
    assert old.DataType.HALF != 1 and old.float16 == old.DataType.HALF  # no comparison with plain ints
    assert old.nptype(old.float16).__name__ == "float16"
    with pytest.raises(TypeError, match="Could not resolve TensorRT datatype"):
        old.nptype(old.bfloat16)


def test_the_fake_module_says_it_is_simulated():
    trt = trt_fake.fake_tensorrt("11.4.0.106")
    assert "fake TensorRT 11.4.0.106" in trt.__quantbench_simulated__
    assert TrtApi.of(trt).simulated == trt.__quantbench_simulated__
    assert json.loads(trt_fake.surface_path("11.4.0.106").read_text())["source"]["generated_by"].startswith("tools/trt_surface.py")
