"""COCO-format evaluation data: a folder with ``images/`` and ``instances.json``.

Only what evaluation needs is read here (image ids and files, categories); pycocotools reads the
annotations again in ``metrics``. Contiguous class index ``i`` (a model's output row ``4 + i``)
is the dataset's ``i``-th category sorted by id, which for COCO maps YOLO's 80 classes onto
COCO's 91-id numbering exactly as Ultralytics' ``coco80_to_coco91_class`` does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantbench.cache import hash_key, sha256_file
from quantbench.errors import DataError

if TYPE_CHECKING:
    from quantbench.cache import ArtifactCache

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
ANNOTATIONS_FILE = "instances.json"
IMAGES_DIR = "images"


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
        )

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
    _require_keys(path, "images", data["images"], ("id", "file_name"))
    _require_keys(path, "categories", data["categories"], ("id", "name"))
    _require_keys(path, "annotations", data["annotations"], ("id", "image_id", "category_id", "bbox"))
    category_ids = {c["id"] for c in data["categories"]}
    image_ids = {im["id"] for im in data["images"]}
    for section, ids in (("categories", category_ids), ("images", image_ids)):
        if len(ids) != len(data[section]):
            raise DataError(f"annotation file {path} repeats an id in '{section}'; every id must be unique.")
    if len({im["file_name"] for im in data["images"]}) != len(data["images"]):
        raise DataError(f"annotation file {path} lists a file_name twice in 'images'; every image needs its own file.")
    for ann in data["annotations"]:
        if ann["category_id"] not in category_ids:
            raise DataError(
                f"annotation file {path}: annotation {ann['id']} has category_id {ann['category_id']!r}, "
                "which is not in 'categories'; fix the annotation or add the category."
            )
        if ann["image_id"] not in image_ids:
            raise DataError(
                f"annotation file {path}: annotation {ann['id']} refers to image_id {ann['image_id']!r}, "
                "which is not in 'images'; fix the annotation or add the image."
            )
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise DataError(
                f"annotation file {path}: annotation {ann['id']} has bbox {bbox!r}; "
                "COCO boxes are [x, y, width, height] in pixels."
            )
    return data


def _require_keys(path: Path, section: str, entries: list[Any], keys: tuple[str, ...]) -> None:
    for i, entry in enumerate(entries):
        missing = [k for k in keys if not isinstance(entry, Mapping) or k not in entry]
        if missing:
            raise DataError(
                f"annotation file {path}: {section}[{i}] lacks {', '.join(repr(k) for k in missing)}; "
                f"every {section} entry needs {', '.join(keys)}."
            )
