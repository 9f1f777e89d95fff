"""COCO-format evaluation data: a folder with ``images/`` and ``instances.json``.

Only what evaluation needs is read here (image ids and files, categories); pycocotools reads the
annotations again in ``metrics``. Contiguous class index ``i`` (a model's output row ``4 + i``)
is the dataset's ``i``-th category sorted by id, which for COCO maps YOLO's 80 classes onto
COCO's 91-id numbering exactly as Ultralytics' ``coco80_to_coco91_class`` does.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantbench.cache import hash_key, sha256_file
from quantbench.errors import DataError
from quantbench.rules import is_number

if TYPE_CHECKING:
    from quantbench.cache import ArtifactCache

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
ANNOTATIONS_FILE = "instances.json"
IMAGES_DIR = "images"
# Longest file or folder name the common filesystems (ext4, xfs, btrfs, APFS, NTFS) accept, in bytes.
_NAME_MAX = 255


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist; pass a folder of .jpg/.png images.")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(
            f"image folder {folder} has no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
            "point it at a folder that holds the images."
        )
    return files


@dataclass(frozen=True)
class CocoDataset:
    """The images one evaluation runs on, and how class indices map to COCO category ids."""

    name: str
    images_dir: Path
    annotations: Path
    image_ids: tuple[int, ...]  # ascending
    files: tuple[Path, ...]  # files[i] is the image of image_ids[i]
    category_ids: tuple[int, ...]  # contiguous class index -> COCO category id
    class_names: tuple[str, ...]
    # (width, height) each image declares in the annotations, None where it declares none: evaluation
    # skips (and counts) an image whose decoded size differs, since its boxes would be misplaced.
    sizes: tuple[tuple[int, int] | None, ...] = ()

    def __len__(self) -> int:
        return len(self.image_ids)

    @classmethod
    def load(
        cls,
        path: Path | None,
        *,
        images: Path | None = None,
        annotations: Path | None = None,
        limit: int | None = None,
    ) -> CocoDataset:
        """Read ``path/instances.json`` and ``path/images/`` (either may be given explicitly).

        ``limit=N`` keeps the first N images by image id. Individual image files are not opened
        here: a missing or corrupt one is skipped (and counted) during evaluation.
        """
        if path is None and (images is None or annotations is None):
            raise DataError("no dataset folder given; pass a folder with images/ and instances.json.")
        folder = Path(path) if path is not None else None
        if folder is not None and folder.is_file():
            raise DataError(f"dataset {folder} is a file, not a folder; pass the folder that holds images/ and "
                            "instances.json.")
        if folder is not None and not folder.is_dir() and (images is None or annotations is None):
            raise DataError(f"dataset folder {folder} does not exist; pass a folder with images/ and instances.json.")
        images_dir = Path(images) if images is not None else folder / IMAGES_DIR  # type: ignore[operator]
        ann_path = Path(annotations) if annotations is not None else folder / ANNOTATIONS_FILE  # type: ignore[operator]
        if not images_dir.is_dir():
            raise DataError(
                f"image folder {images_dir} does not exist; put the dataset's images in it or pass images=."
            )
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise DataError(f"limit={limit!r} is not a positive integer; pass the number of images to evaluate.")

        data = read_instances(ann_path)
        categories = sorted(data["categories"], key=lambda c: c["id"])
        entries = sorted(data["images"], key=lambda im: im["id"])
        total = len(entries)
        if limit is not None:
            entries = entries[:limit]
        files = tuple(images_dir / im["file_name"] for im in entries)
        if not any(f.is_file() for f in files):
            raise DataError(
                f"none of the {len(files)} images listed in {ann_path} are in {images_dir}; "
                "pass the images folder that matches the annotations."
            )
        base = folder.name if folder is not None else ann_path.parent.name
        name = base if limit is None or limit >= total else f"{base}[:{limit}]"
        return cls(
            name=name,
            images_dir=images_dir,
            annotations=ann_path,
            image_ids=tuple(int(im["id"]) for im in entries),
            files=files,
            category_ids=tuple(int(c["id"]) for c in categories),
            class_names=tuple(str(c["name"]) for c in categories),
            sizes=tuple((im["width"], im["height"]) if "width" in im else None for im in entries),
        )

    def declared_sizes(self) -> dict[Path, tuple[int, int]]:
        """Image file -> (width, height) the annotations declare, for images that declare one."""
        return {f: size for f, size in zip(self.files, self.sizes) if size is not None}

    def fingerprint(self, cache: ArtifactCache | None = None) -> str:
        """Stable id of exactly what an evaluation reads: the annotations' bytes, the image selection
        and every image file's bytes (a missing file counts as missing).

        Image bytes belong in it: an image rotated or replaced in place under the same name changes
        the mAP (and the skipped-image count) without changing the annotations. With ``cache`` the
        digests are remembered by (path, size, mtime, inode) like the calibration keys', so a second
        session stats the files instead of reading them; without it every file is read.
        """
        present = [f for f in self.files if f.is_file()]
        digests = cache.file_digests(present) if cache is not None else [sha256_file(f) for f in present]
        by_file = dict(zip(present, digests))
        contents = [by_file.get(f) for f in self.files]  # None: missing, so skipped by the evaluation
        return hash_key(sha256_file(self.annotations), self.image_ids, [f.name for f in self.files], contents)


def read_instances(path: Path) -> dict[str, Any]:
    """Parse and check a COCO ``instances`` JSON; DataError names the file and the problem."""
    path = Path(path)
    data = _parse_instances(path)
    _require_keys(path, "images", data["images"], ("id", "file_name"))
    _require_keys(path, "categories", data["categories"], ("id", "name"))
    _require_keys(path, "annotations", data["annotations"], ("id", "image_id", "category_id", "bbox"))
    for i, image in enumerate(data["images"]):
        _check_image(path, i, image)
    for i, category in enumerate(data["categories"]):
        _check_int(path, f"categories[{i}]", category, "id")
        if not isinstance(category["name"], str):
            raise DataError(f"annotation file {path}: categories[{i}] has name {category['name']!r}; "
                            "give every category a string name.")
    category_ids = {c["id"] for c in data["categories"]}
    image_ids = {im["id"] for im in data["images"]}
    for section, ids in (("categories", category_ids), ("images", image_ids)):
        if len(ids) != len(data[section]):
            raise DataError(f"annotation file {path} repeats an id in '{section}'; every id must be unique.")
    if len({im["file_name"] for im in data["images"]}) != len(data["images"]):
        raise DataError(f"annotation file {path} lists a file_name twice in 'images'; every image needs its own file.")
    for i, ann in enumerate(data["annotations"]):
        _check_annotation(path, f"annotations[{i}] (id {_short(ann['id'])})", ann, category_ids, image_ids)
    return data


def _parse_instances(path: Path) -> dict[str, Any]:
    """The JSON object of ``path`` with its three non-empty sections (lists), or one sentence why not."""
    if not path.is_file():
        raise DataError(f"annotation file {path} does not exist; pass a COCO instances JSON (annotations=).")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(
            f"annotation file {path} is not valid JSON ({exc}); re-create it in COCO instances format."
        ) from None
    if not isinstance(data, dict):
        raise DataError(
            f"annotation file {path} holds a {type(data).__name__}, not a COCO object; "
            "re-create it in COCO instances format."
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"annotation file {path} has no '{key}' list; re-create it in COCO instances format.")
    for key in ("images", "categories"):
        if not data[key]:
            raise DataError(f"annotation file {path} has an empty '{key}' list; it needs at least one entry.")
    return data


def _check_annotation(path: Path, where: str, ann: dict[str, Any], category_ids: set[Any], image_ids: set[Any]) -> None:
    _check_int(path, where, ann, "image_id")
    _check_int(path, where, ann, "category_id")
    if ann["category_id"] not in category_ids:
        raise DataError(
            f"annotation file {path}: {where} has category_id {ann['category_id']!r}, "
            "which is not in 'categories'; fix the annotation or add the category."
        )
    if ann["image_id"] not in image_ids:
        raise DataError(
            f"annotation file {path}: {where} refers to image_id {ann['image_id']!r}, "
            "which is not in 'images'; fix the annotation or add the image."
        )
    bbox = ann["bbox"]
    # NaN and infinities parse from JSON (Python's json accepts them); a NaN or negative box
    # would be scored as ground truth without notice and move the mAP.
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(is_number(v) and v >= 0 for v in bbox)):
        raise DataError(
            f"annotation file {path}: {where} has bbox {_short(bbox)}; COCO boxes are [x, y, width, height] "
            "in pixels, finite and not negative: fix or remove the annotation."
        )
    for key in ("area", "iscrowd"):
        if key in ann and not (is_number(ann[key]) and ann[key] >= 0):
            raise DataError(f"annotation file {path}: {where} has {key} {_short(ann[key])}; it must be a "
                            "finite number of 0 or more: fix or remove the key.")


def _short(value: Any) -> str:
    """``repr`` cut to a readable length: a message quotes an entry, not a 300-character name."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_int(path: Path, where: str, entry: Mapping[str, Any], key: str) -> None:
    value = entry[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise DataError(f"annotation file {path}: {where} has {key} {_short(value)}; COCO ids are integers: "
                        f"write it as a number.")


def _check_image(path: Path, index: int, image: Mapping[str, Any]) -> None:
    """One ``images`` entry: an integer id, a file name inside the image folder, positive declared sizes."""
    where = f"images[{index}] (id {_short(image['id'])})"
    _check_int(path, where, image, "id")
    name = image["file_name"]
    fix = "give the image's name relative to the images/ folder, e.g. '000000000139.jpg'."
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"annotation file {path}: {where} has file_name {_short(name)}; {fix}")
    if "\0" in name:
        raise DataError(f"annotation file {path}: {where} has a NUL character in file_name {_short(name)}; {fix}")
    # Refused rather than skipped: an annotation file (downloaded, generated, tampered) must never
    # make the tool open files outside <folder>/images/, and skipping would silently evaluate on
    # fewer images than the file lists. The check is on the text, not the resolved path: a symlink
    # the user put inside images/ is their own choice of data.
    parts = name.split("/")
    if posixpath.isabs(name) or ".." in parts or posixpath.normpath(name).startswith(".."):
        raise DataError(f"annotation file {path}: {where} has file_name {_short(name)}, which points outside the "
                        f"images/ folder; {fix}")
    try:
        encoded = [os.fsencode(p) for p in parts]
    except UnicodeEncodeError:  # a lone surrogate ("\\ud800" in the JSON) names no file on any filesystem
        raise DataError(f"annotation file {path}: {where} has file_name {_short(name)}, which cannot be encoded "
                        f"as a file name; {fix}") from None
    too_long = [p for p in encoded if len(p) > _NAME_MAX]
    if too_long:
        raise DataError(f"annotation file {path}: {where} has file_name {_short(name)} with a name of "
                        f"{len(too_long[0])} bytes, longer than filesystems allow ({_NAME_MAX}); {fix}")
    declared = [k for k in ("width", "height") if k in image]
    if len(declared) == 1:
        raise DataError(f"annotation file {path}: {where} has {declared[0]} but not "
                        f"{'height' if declared[0] == 'width' else 'width'}; give both or neither.")
    for key in declared:
        value = image[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise DataError(f"annotation file {path}: {where} has {key} {_short(value)}; give the image's size in "
                            "pixels as a positive integer (or remove width and height).")


def _require_keys(path: Path, section: str, entries: list[Any], keys: tuple[str, ...]) -> None:
    for i, entry in enumerate(entries):
        missing = [k for k in keys if not isinstance(entry, Mapping) or k not in entry]
        if missing:
            raise DataError(
                f"annotation file {path}: {section}[{i}] lacks {', '.join(repr(k) for k in missing)}; "
                f"every {section} entry needs {', '.join(keys)}."
            )
