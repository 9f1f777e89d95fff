"""variants.py: the default table loads, and every kind of mistake is one ConfigError sentence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantbench.build.variants import DEFAULT_VARIANTS, Variant, VariantKind, check_baselines, load_variants, variant_toml
from quantbench.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _table(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "variants.toml"
    path.write_text(text)
    return path


def test_default_table_loads():
    variants = load_variants(REPO / DEFAULT_VARIANTS)
    by_name = {v.name: v for v in variants}
    required = {"fp32", "fp16", "int8-max", "int8-entropy", "int8-head-fp16", "int8-entropy-head-fp16", "int8-auto-yolo11n"}
    assert required <= set(by_name)
    assert by_name["fp32"].kind is VariantKind.FP32 and not by_name["fp32"].needs_calibration
    assert by_name["fp16"].kind is VariantKind.FP16 and by_name["fp16"].needs_calibration
    assert by_name["int8-max"].calibration_method == "max" and not by_name["int8-max"].exclude_head
    assert by_name["int8-entropy"].calibration_method == "entropy"
    assert by_name["int8-head-fp16"].exclude_head and by_name["int8-head-fp16"].high_precision_dtype == "fp16"
    assert not by_name["int8-max"].gated and not by_name["int8-entropy"].gated  # ModelOpt's defaults: references
    searched = by_name["int8-auto-yolo11n"]  # the split quantbench search found, for that model only
    assert searched.models == ("yolo11n-coco",) and searched.nodes_to_exclude and searched.gated
    assert [v.id for v in variants] == [v.name for v in variants]
    for variant in variants:
        json.dumps(variant.options())  # part of cache keys: must be JSON-able


def test_options_hold_only_what_shapes_the_build():
    a = Variant(name="a", kind=VariantKind.INT8, calibration_method="entropy", description="one")
    b = Variant(name="b", kind=VariantKind.INT8, calibration_method="entropy", description="two", gated=False)
    assert a.options() == b.options()  # renaming or re-describing keeps the cached build
    assert a.options() != Variant(name="a", kind=VariantKind.INT8, calibration_method="max").options()
    assert Variant(name="f", kind=VariantKind.FP32).options() == {"kind": "fp32"}
    assert a.options()["passes"] is None  # ModelOpt's default passes
    assert Variant(name="p", kind=VariantKind.INT8, passes=()).options()["passes"] == []
    # op_types_to_quantize came later: unset, it stays out of the options (and earlier cache keys).
    assert "op_types_to_quantize" not in a.options()
    only_conv = Variant(name="c", kind=VariantKind.INT8, calibration_method="entropy", op_types_to_quantize=("Conv",))
    assert only_conv.options()["op_types_to_quantize"] == ["Conv"] and only_conv.options() != a.options()


def test_full_int8_table_round_trips(tmp_path: Path):
    path = _table(tmp_path, r'''
[[variant]]
name = "int8-custom"
kind = "int8"
calibration_method = "entropy"
calib_images = 32
op_types_to_exclude = ["Concat", "MaxPool"]
nodes_to_exclude = ["/model\\.0/.*", "/model\\.24/m\\.[0-2]/Conv"]
exclude_head = true
high_precision_dtype = "fp32"
calibrate_per_node = true
passes = []
gated = false
description = "everything set"
''')
    (variant,) = load_variants(path)
    assert variant == Variant(
        name="int8-custom", kind=VariantKind.INT8, calibration_method="entropy", calib_images=32,
        op_types_to_exclude=("Concat", "MaxPool"), nodes_to_exclude=(r"/model\.0/.*", r"/model\.24/m\.[0-2]/Conv"),
        exclude_head=True, high_precision_dtype="fp32", calibrate_per_node=True, passes=(), gated=False,
        description="everything set",
    )


def test_a_variant_names_the_models_it_is_meant_for(tmp_path: Path):
    path = _table(tmp_path, '''
[[variant]]
name = "int8-searched"
kind = "int8"
nodes_to_exclude = ["/model\\\\.23/.*"]
models = ["yolo11n-coco", "yolo11s*"]

[[variant]]
name = "int8-any"
kind = "int8"
''')
    searched, anywhere = load_variants(path)
    assert searched.models == ("yolo11n-coco", "yolo11s*") and anywhere.models == ()
    assert searched.applies_to("yolo11n-coco") and searched.applies_to("yolo11s-coco")  # names and globs
    assert not searched.applies_to("yolov5n-coco") and not searched.applies_to("yolo11n")
    assert searched.skip_reason("yolo11n-coco") is None and anywhere.skip_reason("yolov5n-coco") is None
    assert searched.skip_reason("yolov5n-coco") == (
        "variant 'int8-searched' is meant for models yolo11n-coco, yolo11s* only (its 'models' key in the "
        "variant table); yolov5n-coco skips it")
    # Which models a variant is for does not change what it builds: the cached build is shared.
    assert searched.options() == Variant(name="x", kind=VariantKind.INT8, nodes_to_exclude=searched.nodes_to_exclude).options()


def test_default_table_has_yolo11_specific_variants_that_skip_yolov5n():
    by_name = {v.name: v for v in load_variants(REPO / DEFAULT_VARIANTS)}
    specific = [v for v in by_name.values() if v.models]
    assert specific, "the default table keeps YOLO11-specific variants (attention, the searched split)"
    for variant in specific:
        assert variant.applies_to("yolo11n-coco") and not variant.applies_to("yolov5n-coco")
    for name in ("fp32", "fp16", "int8-max", "int8-entropy", "int8-head-fp16"):
        assert by_name[name].models == ()  # the references run for every model


BAD_TABLES = {
    "unknown key": (
        '[[variant]]\nname = "v"\nkind = "int8"\ncalibration_metod = "max"\n',
        r"variant 'v', key 'calibration_metod': unknown key; did you mean 'calibration_method'\?",
    ),
    "unknown op type": (
        '[[variant]]\nname = "v"\nkind = "int8"\nop_types_to_exclude = ["Conv2D"]\n',
        r"variant 'v', key 'op_types_to_exclude': 'Conv2D' is not an ONNX operator type; did you mean 'Conv",
    ),
    "bad kind": (
        '[[variant]]\nname = "v"\nkind = "int4"\n',
        r"variant 'v', key 'kind': 'int4' is not one of fp32, fp16, int8",
    ),
    "bad method": (
        '[[variant]]\nname = "v"\nkind = "int8"\ncalibration_method = "percentile"\n',
        r"variant 'v', key 'calibration_method': 'percentile' is not one of max, entropy",
    ),
    "bad regex": (
        '[[variant]]\nname = "v"\nkind = "int8"\nnodes_to_exclude = ["/model.(0"]\n',
        r"variant 'v', key 'nodes_to_exclude': '/model.\(0' is not a valid regular expression",
    ),
    "duplicate name": (
        '[[variant]]\nname = "v"\nkind = "fp32"\n[[variant]]\nname = "v"\nkind = "fp16"\n',
        r"variant 'v', key 'name': the name is used twice",
    ),
    "key of another kind": (
        '[[variant]]\nname = "v"\nkind = "fp32"\ncalib_images = 8\n',
        r"variant 'v', key 'calib_images': does not apply to kind 'fp32'",
    ),
    "int8-only key on fp16": (
        '[[variant]]\nname = "v"\nkind = "fp16"\ncalibration_method = "max"\n',
        r"variant 'v', key 'calibration_method': does not apply to kind 'fp16'",
    ),
    "unknown op type to quantize": (
        '[[variant]]\nname = "v"\nkind = "int8"\nop_types_to_quantize = ["Conv", "Sigmod"]\n',
        r"variant 'v', key 'op_types_to_quantize': 'Sigmod' is not an ONNX operator",
    ),
    "bad count": (
        '[[variant]]\nname = "v"\nkind = "int8"\ncalib_images = 0\n',
        r"variant 'v', key 'calib_images': 0 is not a positive whole number",
    ),
    "negative calibration seed": (
        '[[variant]]\nname = "v"\nkind = "int8"\ncalib_seed = -1\n',
        r"variant 'v', key 'calib_seed': -1 is not a whole number >= 0",
    ),
    "calibration seed on fp32": (
        '[[variant]]\nname = "v"\nkind = "fp32"\ncalib_seed = 1\n',
        r"variant 'v', key 'calib_seed': does not apply to kind 'fp32'",
    ),
    "string for bool": (
        '[[variant]]\nname = "v"\nkind = "int8"\nexclude_head = "yes"\n',
        r"variant 'v', key 'exclude_head': 'yes' is not a boolean",
    ),
    "bad dtype": (
        '[[variant]]\nname = "v"\nkind = "int8"\nhigh_precision_dtype = "fp8"\n',
        r"variant 'v', key 'high_precision_dtype': 'fp8' is not one of fp32, fp16, bf16",
    ),
    "bad pass": (
        '[[variant]]\nname = "v"\nkind = "int8"\npasses = ["fold_everything"]\n',
        r"variant 'v', key 'passes': 'fold_everything' is not a ModelOpt pass",
    ),
    "not a list": (
        '[[variant]]\nname = "v"\nkind = "int8"\nnodes_to_exclude = "/model.0/.*"\n',
        r"variant 'v', key 'nodes_to_exclude': '/model.0/.\*' is not a list of strings",
    ),
    "missing kind": (
        '[[variant]]\nname = "v"\n',
        r"variant 'v', key 'kind': missing",
    ),
    "missing name": (
        '[[variant]]\nkind = "fp32"\n',
        r"variant #1, key 'name': missing",
    ),
    "name with spaces": (
        '[[variant]]\nname = "int8 max"\nkind = "int8"\n',
        r"variant 'int8 max', key 'name': 'int8 max' may only hold letters",
    ),
    "top-level key": (
        '[[variants]]\nname = "v"\nkind = "fp32"\n',
        r"top-level key 'variants' is unknown; did you mean 'variant'\?",
    ),
    "toml syntax": (
        '[[variant]]\nname = "v\nkind = "fp32"\n',
        r"is not valid TOML \(.*line 2",
    ),
    "empty": ("# nothing here\n", "defines no variants"),
    "models not a list": (
        '[[variant]]\nname = "v"\nkind = "int8"\nmodels = "yolo11n-coco"\n',
        r"variant 'v', key 'models': 'yolo11n-coco' is not a list of strings",
    ),
    "models empty": (
        '[[variant]]\nname = "v"\nkind = "int8"\nmodels = []\n',
        r"variant 'v', key 'models': is empty; list the models it is for",
    ),
    "model name with a path": (
        '[[variant]]\nname = "v"\nkind = "int8"\nmodels = ["models/yolo11n-coco.onnx"]\n',
        r"variant 'v', key 'models': 'models/yolo11n-coco.onnx' is not a model name or glob",
    ),
    "op type both quantized and excluded": (
        '[[variant]]\nname = "v"\nkind = "int8"\nop_types_to_quantize = ["Conv", "Add"]\nop_types_to_exclude = ["Conv"]\n',
        r"variant 'v', key 'op_types_to_exclude': Conv is also in op_types_to_quantize",
    ),
}


@pytest.mark.parametrize("case", list(BAD_TABLES))
def test_bad_tables_are_one_config_error(tmp_path: Path, case: str):
    text, match = BAD_TABLES[case]
    path = _table(tmp_path, text)
    with pytest.raises(ConfigError, match=match) as err:
        load_variants(path)
    message = str(err.value)
    assert str(path) in message  # names the file
    assert message.count(". ") <= 1 and "\n" not in message.strip()  # one sentence


def test_missing_table_file(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"variant table .*nope\.toml does not exist"):
        load_variants(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    "variant",
    [
        Variant(name="fp32", kind=VariantKind.FP32),
        Variant(name="fp16-head", kind=VariantKind.FP16, calib_images=64, calib_seed=0, exclude_head=True,
                gated=False, models=("yolo11*",)),
        Variant(name="int8-auto", kind=VariantKind.INT8, calibration_method="entropy", calib_seed=3,
                op_types_to_exclude=("Concat",), op_types_to_quantize=("Conv", "MatMul"),
                nodes_to_exclude=("^/model\\.0/conv/Conv$", '/model\\.23/"quoted"'), high_precision_dtype="bf16",
                calibrate_per_node=True, passes=(), description='found "automatically" \\o/ ünïcode'),
        Variant(name="int8-default-passes", kind=VariantKind.INT8, passes=("concat_elimination",)),
    ],
    ids=lambda v: v.name,
)
def test_written_table_reads_back_equal(tmp_path: Path, variant: Variant):
    # calib_seed=0 and passes=() differ from their defaults (None) only by being falsy: both must survive.
    path = _table(tmp_path, variant_toml(variant) + "\n" + variant_toml(Variant(name="other", kind=VariantKind.FP16)))
    assert load_variants(path) == (variant, Variant(name="other", kind=VariantKind.FP16))


def test_written_table_leaves_defaults_and_inapplicable_options_out():
    text = variant_toml(Variant(name="fp32", kind=VariantKind.FP32, calib_images=7))
    assert text == '[[variant]]\nname = "fp32"\nkind = "fp32"\n'  # calib_images does not apply to fp32


def test_a_baseline_kept_off_a_model_by_its_models_key_is_refused(tmp_path: Path):
    """Issue 22 (4): the baseline was skipped on the run's model, yet named the winner."""
    path = _table(tmp_path, '''
[[variant]]
name = "fp16"
kind = "fp16"
models = ["yolo11*"]

[[variant]]
name = "int8-max"
kind = "int8"
''')
    variants = load_variants(path)
    check_baselines(variants, {"yolo11n-coco": "fp16", "yolov5n-coco": "int8-max"}, table=path, thresholds="t.toml")
    with pytest.raises(ConfigError) as err:
        check_baselines(variants, {"yolo11n-coco": "fp16", "yolov5n-coco": "fp16"}, table=path, thresholds="t.toml")
    assert str(err.value) == (
        f"t.toml makes 'fp16' the baseline of yolov5n-coco, but {path} restricts 'fp16' to yolo11* (its 'models' "
        "key); add yolov5n-coco to its models or choose another baseline for it.")
