"""COCO-format folders: the real val500 subset, and every way a user's folder can be wrong."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from quantbench.data.dataset import CocoDataset, list_images
from quantbench.errors import DataError


@pytest.fixture
def tiny_coco(val500: Path, tmp_path: Path) -> Path:
    """A 3-image copy of val500 (the 3 lowest ids) to break in different ways."""
    data = json.loads((val500 / "instances.json").read_text())
    images = sorted(data["images"], key=lambda im: im["id"])[:3]
    ids = {im["id"] for im in images}
    (tmp_path / "tiny" / "images").mkdir(parents=True)
    for im in images:
        shutil.copy(val500 / "images" / im["file_name"], tmp_path / "tiny" / "images")
    data["images"] = images
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    (tmp_path / "tiny" / "instances.json").write_text(json.dumps(data))
    return tmp_path / "tiny"


def edit_instances(folder: Path, edit) -> None:
    path = folder / "instances.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_loads_val500(val500: Path):
    ds = CocoDataset.load(val500)
    raw = json.loads((val500 / "instances.json").read_text())
    assert ds.name == "val500" and len(ds) == 500
    assert list(ds.image_ids) == sorted(im["id"] for im in raw["images"])
    assert all(f.is_file() for f in ds.files)
    assert ds.files[0].name == next(im["file_name"] for im in raw["images"] if im["id"] == ds.image_ids[0])
    # 80 classes onto COCO's 91-id numbering, sorted by id: what YOLO's class index means
    assert len(ds.category_ids) == 80 and list(ds.category_ids) == sorted(ds.category_ids)
    assert (ds.category_ids[0], ds.class_names[0]) == (1, "person")
    assert (ds.category_ids[-1], ds.class_names[-1]) == (90, "toothbrush")
    assert ds.class_names[ds.category_ids.index(13)] == "stop sign"


def test_limit_takes_the_first_images_by_id(val500: Path):
    full = CocoDataset.load(val500)
    first10 = CocoDataset.load(val500, limit=10)
    assert first10.image_ids == full.image_ids[:10] and first10.files == full.files[:10]
    assert first10.name == "val500[:10]"
    assert CocoDataset.load(val500, limit=10_000).name == "val500"  # nothing cut


def test_fingerprint_follows_the_selection_and_the_annotations(tiny_coco: Path):
    fp = CocoDataset.load(tiny_coco).fingerprint()
    assert fp == CocoDataset.load(tiny_coco).fingerprint()
    assert fp != CocoDataset.load(tiny_coco, limit=2).fingerprint()
    edit_instances(tiny_coco, lambda d: d["annotations"][0]["bbox"].__setitem__(0, 1.0))
    assert fp != CocoDataset.load(tiny_coco).fingerprint()


@pytest.mark.parametrize("remembered", [False, True], ids=["read", "remembered-digests"])
def test_fingerprint_follows_the_image_bytes(tiny_coco: Path, tmp_path: Path, remembered: bool):
    """An image rotated or replaced in place (same name, same annotations) is a different evaluation."""
    import cv2

    from quantbench.cache import ArtifactCache

    cache = ArtifactCache(tmp_path / "cache") if remembered else None
    before = CocoDataset.load(tiny_coco).fingerprint(cache)
    assert before == CocoDataset.load(tiny_coco).fingerprint(cache)
    image = CocoDataset.load(tiny_coco).files[1]
    cv2.imwrite(str(image), cv2.rotate(cv2.imread(str(image)), cv2.ROTATE_180))
    rotated = CocoDataset.load(tiny_coco).fingerprint(cache)
    assert rotated != before
    image.write_bytes(b"not a jpeg")  # corrupt: the evaluation skips it, so the key must change again
    corrupt = CocoDataset.load(tiny_coco).fingerprint(cache)
    assert corrupt not in (before, rotated)
    image.unlink()
    assert CocoDataset.load(tiny_coco).fingerprint(cache) not in (before, rotated, corrupt)


def test_explicit_images_and_annotations(tiny_coco: Path, tmp_path: Path):
    moved = tmp_path / "elsewhere"
    shutil.copytree(tiny_coco / "images", moved / "pics")
    shutil.copy(tiny_coco / "instances.json", moved / "gt.json")
    ds = CocoDataset.load(None, images=moved / "pics", annotations=moved / "gt.json")
    assert len(ds) == 3 and ds.images_dir == moved / "pics" and ds.annotations == moved / "gt.json"


def test_list_images_sorted_and_filtered(tmp_path: Path):
    for name in ("b.JPG", "a.png", "notes.txt", "c.jpeg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.jpg").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.JPG", "c.jpeg"]


def test_list_images_errors(tmp_path: Path):
    with pytest.raises(DataError, match="does not exist"):
        list_images(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=f"image folder {tmp_path} has no images"):
        list_images(tmp_path)


def test_missing_dataset_folder(tmp_path: Path):
    with pytest.raises(DataError, match="dataset folder .*nope does not exist"):
        CocoDataset.load(tmp_path / "nope")
    with pytest.raises(DataError, match="no dataset folder given"):
        CocoDataset.load(None)


def test_missing_images_folder(tiny_coco: Path):
    shutil.rmtree(tiny_coco / "images")
    with pytest.raises(DataError, match=r"image folder .*images does not exist"):
        CocoDataset.load(tiny_coco)


def test_missing_instances_json(tiny_coco: Path):
    (tiny_coco / "instances.json").unlink()
    with pytest.raises(DataError, match=r"annotation file .*instances.json does not exist"):
        CocoDataset.load(tiny_coco)


@pytest.mark.parametrize(
    "content, match",
    [
        ("", "is not valid JSON"),
        ("{\"images\": [", "is not valid JSON"),
        ("[1, 2]", "holds a list, not a COCO object"),
        ("{}", "has no 'images' list"),
        ('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}', "has an empty 'images' list"),
        (
            '{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [], "categories": []}',
            "empty 'categories' list",
        ),
        ("\xff\xfe", "is not valid JSON"),
    ],
)
def test_empty_or_malformed_instances_json(tiny_coco: Path, content: str, match: str):
    (tiny_coco / "instances.json").write_bytes(content.encode("latin-1"))
    with pytest.raises(DataError, match=match) as info:
        CocoDataset.load(tiny_coco)
    assert str(tiny_coco / "instances.json") in str(info.value)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d["images"][1].pop("file_name"), r"images\[1\] lacks 'file_name'"),
        (lambda d: d["categories"][0].pop("name"), r"categories\[0\] lacks 'name'"),
        (lambda d: d["annotations"][0].pop("bbox"), r"annotations\[0\] lacks 'bbox'"),
        (lambda d: d["annotations"][0].__setitem__("category_id", 999), "category_id 999, which is not in"),
        (lambda d: d["annotations"][0].__setitem__("image_id", -5), "image_id -5, which is not in 'images'"),
        (lambda d: d["annotations"][0].__setitem__("bbox", [1, 2, 3]), r"has bbox \[1, 2, 3\]"),
        (lambda d: d["images"][1].__setitem__("id", d["images"][0]["id"]), "repeats an id in 'images'"),
        (lambda d: d["images"][1].__setitem__("file_name", d["images"][0]["file_name"]), "lists a file_name twice"),
    ],
)
def test_malformed_entries(tiny_coco: Path, edit, match: str):
    edit_instances(tiny_coco, edit)
    with pytest.raises(DataError, match=match):
        CocoDataset.load(tiny_coco)


def test_annotations_that_match_no_image_file(tiny_coco: Path):
    for f in (tiny_coco / "images").iterdir():
        f.rename(f.with_name("renamed-" + f.name))
    with pytest.raises(DataError, match="none of the 3 images listed"):
        CocoDataset.load(tiny_coco)


@pytest.mark.parametrize("limit", [0, -3, 2.5, True])
def test_bad_limit(tiny_coco: Path, limit):
    with pytest.raises(DataError, match="is not a positive integer"):
        CocoDataset.load(tiny_coco, limit=limit)


# Issue 22: an annotation file must never make the tool read outside <folder>/images/, and no entry
# reaches a traceback. Refused (not skipped): a file that points elsewhere was generated or edited
# wrongly, and skipping it would quietly evaluate on fewer images than the file lists.
@pytest.mark.parametrize(("file_name", "says"), [
    ("../../other/images/x.jpg", "points outside the images/ folder"),
    ("/etc/passwd", "points outside the images/ folder"),
    ("sub/../../x.jpg", "points outside the images/ folder"),
    ("a" * 300 + ".jpg", "304 bytes, longer than filesystems allow"),
    ("x\0.jpg", "NUL character"),
    ("", "has file_name ''"),
    (17, "has file_name 17"),
    ("\ud800.jpg", "cannot be encoded"),
])
def test_file_names_outside_the_image_folder_are_refused(tiny_coco: Path, file_name, says):
    edit_instances(tiny_coco, lambda d: d["images"][1].update(file_name=file_name))
    with pytest.raises(DataError, match="images\\[1\\] \\(id ") as err:
        CocoDataset.load(tiny_coco)
    message = str(err.value)
    assert says in message and str(tiny_coco / "instances.json") in message
    assert "relative to the images/ folder" in message and not re.search(r"\w\. [A-Z]", message)  # one sentence


def test_an_escaping_file_name_is_refused_even_when_the_file_exists(tiny_coco: Path):
    # 7d950c6 read ../other/x.jpg without notice: it exists, so nothing looked wrong
    other = tiny_coco.parent / "other"
    other.mkdir()
    first = sorted((tiny_coco / "images").iterdir())[0]
    shutil.copy(first, other / "x.jpg")
    edit_instances(tiny_coco, lambda d: d["images"][0].update(file_name="../../other/x.jpg"))
    with pytest.raises(DataError, match="outside the images/ folder"):
        CocoDataset.load(tiny_coco)


def _first_annotation(d: dict) -> dict:
    return d["annotations"][0]


@pytest.mark.parametrize(("edit", "says"), [
    (lambda d: [a.update(image_id="x") for a in d["annotations"] if a["image_id"] == d["images"][0]["id"]]
     and d["images"][0].update(id="x"), "has id 'x'; COCO ids are integers"),
    (lambda d: d["images"][0].update(id=True), "has id True; COCO ids are integers"),
    (lambda d: _first_annotation(d)["bbox"].__setitem__(2, -5.0), "has bbox"),
    (lambda d: _first_annotation(d)["bbox"].__setitem__(1, float("nan")), "has bbox"),
    (lambda d: _first_annotation(d)["bbox"].__setitem__(0, float("inf")), "has bbox"),
    (lambda d: _first_annotation(d).update(area=-1), "has area -1"),
    (lambda d: _first_annotation(d).update(category_id="1"), "has category_id '1'; COCO ids are integers"),
    (lambda d: d["images"][0].update(width=0), "has width 0"),
    (lambda d: d["images"][0].pop("height"), "has width but not height"),
    (lambda d: d["categories"][0].update(name=None), "has name None"),
])
def test_malformed_entries_are_one_sentence(tiny_coco: Path, edit, says):
    edit_instances(tiny_coco, edit)
    with pytest.raises(DataError) as err:
        CocoDataset.load(tiny_coco)
    assert says in str(err.value) and str(tiny_coco / "instances.json") in str(err.value)


def test_declared_sizes_are_kept_for_the_size_check(tiny_coco: Path):
    ds = CocoDataset.load(tiny_coco)
    raw = {im["id"]: im for im in json.loads((tiny_coco / "instances.json").read_text())["images"]}
    assert ds.sizes == tuple((raw[i]["width"], raw[i]["height"]) for i in ds.image_ids)
    assert ds.declared_sizes()[ds.files[0]] == ds.sizes[0]


def test_a_file_given_as_the_dataset_folder_is_named_as_a_file(tiny_coco: Path):
    with pytest.raises(DataError, match="is a file, not a folder"):
        CocoDataset.load(tiny_coco / "instances.json")
